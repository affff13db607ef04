//! Tests of the HTTP/2 framer: unit tests, mid-stream HPACK tests, property tests.

mod limits;
mod midstream;
mod props;
mod stored_form;
mod support;
mod unit;
