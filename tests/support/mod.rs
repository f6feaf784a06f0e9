#![allow(dead_code)]
pub mod cluster;
pub mod mmdb;
pub mod session;
