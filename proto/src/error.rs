//! One small vocabulary of error kinds, mapped to gRPC codes, HTTP statuses and the wire enum.
//! Each kind tells a caller whether retrying can help.

use crate::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Conflict,
    Unauthenticated,
    Forbidden,
    /// Something needed is down or not there yet; retrying later can help.
    Unavailable,
    /// The org's residency policy forbids it.
    Residency,
    /// A newer generation owns the org; this writer must stop.
    Fenced,
    /// The request or its body is larger than allowed.
    TooLarge,
    Internal,
    /// Someone called it off (an operator cancelled an operation).
    Cancelled,
    /// The node is below its free-space headroom: it serves reads but takes no writes until
    /// space is freed (it recovers by itself), so retrying later can help.
    StorageFull,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::Unavailable,
        ErrorKind::Residency,
        ErrorKind::Fenced,
        ErrorKind::TooLarge,
        ErrorKind::Internal,
        ErrorKind::Cancelled,
        ErrorKind::StorageFull,
    ];

    /// The kind's name, as JSON and stored records spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Residency => "residency",
            ErrorKind::Fenced => "fenced",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Internal => "internal",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::StorageFull => "storage_full",
        }
    }

    /// The kind named `s` (see [`ErrorKind::as_str`]).
    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::Internal | ErrorKind::StorageFull
        )
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict | ErrorKind::Fenced | ErrorKind::Cancelled => 409,
            ErrorKind::Residency => 422,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
            ErrorKind::StorageFull => 507,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::Forbidden => tonic::Code::PermissionDenied,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Conflict => tonic::Code::AlreadyExists,
            ErrorKind::Fenced => tonic::Code::Aborted,
            ErrorKind::Residency => tonic::Code::FailedPrecondition,
            ErrorKind::TooLarge | ErrorKind::StorageFull => tonic::Code::ResourceExhausted,
            ErrorKind::Cancelled => tonic::Code::Cancelled,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    pub fn to_wire(self) -> pb::ErrorCode {
        match self {
            ErrorKind::InvalidArgument => pb::ErrorCode::InvalidArgument,
            ErrorKind::NotFound => pb::ErrorCode::NotFound,
            ErrorKind::Conflict => pb::ErrorCode::Conflict,
            ErrorKind::Unauthenticated => pb::ErrorCode::Unauthenticated,
            ErrorKind::Forbidden => pb::ErrorCode::Forbidden,
            ErrorKind::Unavailable => pb::ErrorCode::Unavailable,
            ErrorKind::Residency => pb::ErrorCode::Residency,
            ErrorKind::Fenced => pb::ErrorCode::Fenced,
            ErrorKind::TooLarge => pb::ErrorCode::TooLarge,
            ErrorKind::Cancelled => pb::ErrorCode::Cancelled,
            ErrorKind::Internal => pb::ErrorCode::Internal,
            ErrorKind::StorageFull => pb::ErrorCode::StorageFull,
        }
    }

    pub fn from_wire(code: pb::ErrorCode) -> Self {
        match code {
            pb::ErrorCode::InvalidArgument => ErrorKind::InvalidArgument,
            pb::ErrorCode::NotFound => ErrorKind::NotFound,
            pb::ErrorCode::Conflict => ErrorKind::Conflict,
            pb::ErrorCode::Unauthenticated => ErrorKind::Unauthenticated,
            pb::ErrorCode::Forbidden => ErrorKind::Forbidden,
            pb::ErrorCode::Unavailable => ErrorKind::Unavailable,
            pb::ErrorCode::Residency => ErrorKind::Residency,
            pb::ErrorCode::Fenced => ErrorKind::Fenced,
            pb::ErrorCode::TooLarge => ErrorKind::TooLarge,
            pb::ErrorCode::Cancelled => ErrorKind::Cancelled,
            pb::ErrorCode::StorageFull => ErrorKind::StorageFull,
            pb::ErrorCode::Internal | pb::ErrorCode::Unspecified => ErrorKind::Internal,
        }
    }
}

/// A coarse, prescriptive error: a kind the caller can act on and a message a person can read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HemvistError {
    pub kind: ErrorKind,
    pub message: String,
}

impl HemvistError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl From<crate::IdError> for HemvistError {
    fn from(e: crate::IdError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<HemvistError> for tonic::Status {
    fn from(e: HemvistError) -> Self {
        tonic::Status::new(e.kind.grpc_code(), e.message)
    }
}

#[cfg(test)]
mod names {
    use super::ErrorKind;

    #[test]
    fn names_round_trip_and_match_the_json_spelling() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).ok(),
                Some(format!("\"{}\"", k.as_str()))
            );
        }
        assert_eq!(ErrorKind::parse("host"), None);
    }
}
