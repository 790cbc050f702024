//! HTTP/1.1 as pure sans-IO codecs: [`request`] frames requests out of the bytes a connection
//! has received, and [`response`] writes responses into the caller's buffer. Neither touches a
//! socket or a clock.

pub mod request;
pub mod response;
pub mod security;
pub mod server;
pub mod tunnel;
