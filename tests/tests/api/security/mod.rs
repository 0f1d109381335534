//! Security findings, each with a black-box test that failed on the binary
//! it was found in: one module per area (the connection path, tokens and
//! credentials, the WebSocket protocol).

mod connection;
mod tokens;
mod websocket;
