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

fn local_route(hosted: &NodeState, me: &NodeId, org: &OrgId) -> Route {
    let placement = hosted.placement(org);
    let hosted = hosted.hosted(org);
    match placement {
        Some(p) if p.node_id == *me => match hosted {
            Some(h) if h.generation >= p.generation => Route::Local,
            _ => Route::Preparing,
        },
        Some(p) if hosted.as_ref().is_some_and(|h| h.generation > p.generation) => {
            // Our cache is behind what we were told to host; trust the newer grant.
            Route::Local
        }
        Some(p) => Route::Elsewhere {
            node_url: p.node_url,
        },
        None if hosted.is_some() => Route::Local,
        None => Route::Unknown,
    }
}
