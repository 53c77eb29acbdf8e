//! Rejected readings: why (a machine-readable [`Reason`] and a message) and where in the
//! request. The dataset's log of recent rejects is in [`crate::registry`].

use serde::Serialize;

pub use crate::model::Reason;

/// One reading's rejection, before we know its position in the request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reject {
    pub reason: Reason,
    pub message: String,
}

impl Reject {
    pub fn new(reason: Reason, message: impl Into<String>) -> Reject {
        Reject {
            reason,
            message: message.into(),
        }
    }
}

/// A rejected reading of a request: its position in the body (array element, NDJSON or
/// line-protocol line, first SenML record of the reading; 0-based) and why.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rejected {
    pub index: u32,
    pub reason: Reason,
    pub message: String,
    /// The sensor id, when the reading got far enough to have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        for code in &codes {
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let json =
                serde_json::to_string(&Reason::ALL[codes.iter().position(|c| c == code).unwrap()])
                    .unwrap();
            assert_eq!(json, format!("\"{code}\""));
        }
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }
}
