//! Moves, on a node. The control plane drives a move as one persisted operation; a node only
//! does the steps it is told, each idempotent:
//!
//! - on the source, [`source`]: serve the org's backup objects to the target (`MoveOut`), then
//!   fence the org and report its final position (`Fence`);
//! - on the target, [`target`]: copy and tail those objects into a staging file (`MoveIn`),
//!   then finish at exactly the final position (`FinishMove`);
//! - on both, `EndMove`: forget the move (and, rolled back, lift the fence or discard the copy).
//!
//! Why the copy goes through the source region's backups rather than a stream of the source's
//! WAL: the backups already are a verified, sealed, position-numbered copy of every committed
//! write (the same objects a restore reads, with the same checks), so the target reuses the
//! restore path instead of a second replication protocol; the source does no SQLite work for the
//! copy (it serves objects), the bytes that cross are sealed with the org's key, no node needs
//! another region's store credentials (the source reads its own store), and the final position
//! is, by construction, what the old region's store holds.

pub mod remote;
pub mod source;
pub mod target;
