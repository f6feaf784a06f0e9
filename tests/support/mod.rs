#![allow(dead_code)]
pub mod cluster;
pub mod mmdb;
pub mod s3;
pub mod session;
pub mod story;
