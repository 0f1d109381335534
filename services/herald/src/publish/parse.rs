//! A publish body into events, checked in the contract's order: size, then
//! shape and topic. Permission comes after (see [`super::authorize`]).

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{Limits, PublishError};
use crate::event::NewEvent;
use crate::topic::Topic;

/// Longest publisher-chosen `id` or `type`, in bytes.
pub const MAX_LABEL_BYTES: usize = 255;

/// One event of a request body, loosely typed so each check can say exactly
/// what is wrong.
#[derive(Deserialize)]
struct Loose<'a> {
    #[serde(borrow, default)]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// `Some` whenever the field is present, `null` included.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses and checks a publish body (already within the body size limit).
pub fn parse(body: &[u8], limits: Limits) -> Result<(Vec<NewEvent>, bool), PublishError> {
    let raw: &RawValue = serde_json::from_slice(body)
        .map_err(|e| PublishError::InvalidJson(format!("the body is not valid JSON: {e}")))?;
    let text = raw.get().trim_start();
    let (elements, batch): (Vec<&RawValue>, bool) = if text.starts_with('[') {
        let elements: Vec<&RawValue> = serde_json::from_str(raw.get())
            .map_err(|e| PublishError::InvalidJson(format!("the body is not valid JSON: {e}")))?;
        (elements, true)
    } else {
        (vec![raw], false)
    };
    if elements.len() > limits.max_batch_events {
        return Err(PublishError::PayloadTooLarge(format!(
            "a batch holds at most {} events; this one has {}",
            limits.max_batch_events,
            elements.len()
        )));
    }
    if elements.is_empty() {
        return Err(PublishError::InvalidEvent(
            "an empty batch publishes nothing".into(),
        ));
    }
    let loose: Vec<Result<Loose, serde_json::Error>> = elements
        .iter()
        .map(|e| serde_json::from_str(e.get()))
        .collect();
    // Size comes before shape.
    for (i, event) in loose.iter().enumerate() {
        if let Ok(Loose {
            data: Some(data), ..
        }) = event
            && data.get().len() > limits.max_data_bytes
        {
            return Err(PublishError::PayloadTooLarge(format!(
                "{}data is {} bytes of JSON; at most {} are accepted",
                at(batch, i),
                data.get().len(),
                limits.max_data_bytes
            )));
        }
    }
    let events = loose
        .into_iter()
        .enumerate()
        .map(|(i, event)| shape(event, batch, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((events, batch))
}

fn at(batch: bool, i: usize) -> String {
    if batch {
        format!("event [{i}]: ")
    } else {
        String::new()
    }
}

fn shape(
    event: Result<Loose, serde_json::Error>,
    batch: bool,
    i: usize,
) -> Result<NewEvent, PublishError> {
    let invalid = |msg: &str| PublishError::InvalidEvent(format!("{}{msg}", at(batch, i)));
    let event = event.map_err(|_| {
        invalid(r#"an event is an object: {"topic":"...","data":...,"id":"optional","type":"optional"}"#)
    })?;
    let topic = event
        .topic
        .ok_or_else(|| invalid("\"topic\" is required"))?;
    let topic: String =
        serde_json::from_str(topic.get()).map_err(|_| invalid("\"topic\" must be a string"))?;
    let topic = Topic::parse(&topic)
        .map_err(|e| PublishError::InvalidTopic(format!("{}{e}", at(batch, i))))?;
    let data = event
        .data
        .ok_or_else(|| invalid("\"data\" is required (any JSON value, null included)"))?;
    let id = label(event.id, "id").map_err(|m| invalid(&m))?;
    let kind = label(event.kind, "type").map_err(|m| invalid(&m))?;
    Ok(NewEvent {
        topic,
        id_given: id.is_some(),
        id: id.unwrap_or_else(server_id),
        kind,
        data: single_line(data),
    })
}

/// `data` on one line, so every transport can frame it (an SSE `data:`
/// field ends at a line break). JSON allows raw line breaks only as
/// insignificant whitespace, so turning them into spaces keeps the value.
fn single_line(data: &RawValue) -> Box<RawValue> {
    let text = data.get();
    if !text.contains(['\n', '\r']) {
        return data.to_owned();
    }
    let text = text.replace(['\n', '\r'], " ");
    RawValue::from_string(text).expect("replacing whitespace keeps JSON valid")
}

/// An optional `id` or `type`: a string of 1 to 255 bytes with no control characters.
fn label(raw: Option<&RawValue>, name: &str) -> Result<Option<String>, String> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    let text: String =
        serde_json::from_str(raw.get()).map_err(|_| format!("\"{name}\" must be a string"))?;
    if text.is_empty() || text.len() > MAX_LABEL_BYTES {
        return Err(format!("\"{name}\" must be 1 to {MAX_LABEL_BYTES} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("\"{name}\" must not contain control characters"));
    }
    Ok(Some(text))
}

/// A server-made unique id: 128 random bits.
fn server_id() -> String {
    format!("h-{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_data_bytes: 64 * 1024,
        max_batch_events: 1000,
    };

    #[test]
    fn line_breaks_in_data_become_spaces() {
        let body = "{\"topic\":\"a\",\"data\":{\r\n \"k\": \"v\\nw\"\n}}";
        let (events, _) = parse(body.as_bytes(), LIMITS).expect("valid");
        assert_eq!(events[0].data.get(), "{   \"k\": \"v\\nw\" }");
    }

    #[test]
    fn null_data_is_data_and_absent_id_gets_a_server_id() {
        let (events, batch) = parse(br#"{"topic":"a","data":null}"#, LIMITS).expect("valid");
        assert!(!batch);
        assert_eq!(events[0].data.get(), "null");
        assert!(events[0].id.starts_with("h-"));
    }
}
