//! Where a request for an org goes, decided from the node's cached placement alone (no round
//! trip to the control plane). Keeps true: an org is served here only while this node hosts it at
//! a generation at least the placement's; a newer grant than the cache wins, an older never does;
//! and, after a restart long out of touch, only once the cache is fresh again.

use hemvist_proto::{NodeId, OrgId};

use crate::state::NodeState;

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// This node hosts the org at its current generation.
    Local,
    /// The org lives on another node: send the user there, same path and query.
    Elsewhere {
        node_url: String,
    },
    /// The org is placed here but the node has not finished setting it up.
    Preparing,
    Unknown,
}

pub fn route(hosted: &NodeState, me: &NodeId, org: &OrgId) -> Route {
    match local_route(hosted, me, org) {
        // Out of touch long enough to have had its orgs failed over: nothing of its own is served
        // from the cache until the control plane has sent every placement again.
        Route::Local if !hosted.cache_trusted() => Route::Preparing,
        other => other,
    }
}

fn local_route(state: &NodeState, me: &NodeId, org: &OrgId) -> Route {
    let placement = state.placement(org);
    let hosted = state.hosted(org);
    match placement {
        Some(p) if p.node_id == *me => match hosted {
            Some(h) if h.generation >= p.generation => Route::Local,
            _ => Route::Preparing,
        },
        Some(p) if hosted.as_ref().is_some_and(|h| h.generation > p.generation) => {
            // Our cache is behind what we were told to host; trust the newer grant.
            Route::Local
        }
        // A move's copy finished here and the switch is under way: the source may already send
        // users here, so sending them back to it would bounce them between the two.
        Some(_) if hosted.is_none() && state.arriving(org) => Route::Preparing,
        Some(p) => Route::Elsewhere {
            node_url: p.node_url,
        },
        None if hosted.is_some() => Route::Local,
        None => Route::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Placement;
    use hemvist_proto::{Generation, RegionId};

    #[test]
    fn an_arrived_copy_is_not_sent_back_to_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let state = NodeState::open(&dir.path().join("node.db")).unwrap();
        let me = NodeId::parse("eu-north-1").unwrap();
        let org = OrgId::parse("acme").unwrap();
        let source = Placement {
            region: RegionId::parse("eu-central").unwrap(),
            node_id: NodeId::parse("eu-central-1").unwrap(),
            node_url: "http://127.0.0.1:1".into(),
            generation: Generation::new(3).unwrap(),
        };
        state
            .apply_placements(false, vec![(org.clone(), source)], vec![])
            .unwrap();
        assert!(matches!(route(&state, &me, &org), Route::Elsewhere { .. }));
        state.set_arriving(&org, true);
        assert_eq!(route(&state, &me, &org), Route::Preparing);
        state.set_arriving(&org, false);
        assert!(matches!(route(&state, &me, &org), Route::Elsewhere { .. }));
    }
}
