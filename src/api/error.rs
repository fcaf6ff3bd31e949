//! Errors as answers: each error mapped to its entry in the table of codes (`domain::code`),
//! and the JSON error body `{code, error, message, field?}`.

use crate::admin;
pub use crate::domain::code::Code;
use crate::store::StoreError;
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Numeric code.
    pub code: u32,
    /// The code's word.
    pub error: &'static str,
    /// For people.
    pub message: String,
    /// The input field at fault, for bad input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// Which outcome.
    pub code: Code,
    /// For people; never internal detail or secrets.
    pub message: String,
    /// The input field at fault.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The answer to a store error, counted in the metrics under `op` (`verify`, or `api` for
    /// every other route).
    pub fn from_store(e: &StoreError, op: &'static str) -> ApiError {
        metrics::counter!(crate::metrics::STORE_ERRORS, "op" => op).increment(1);
        store_error(e)
    }

    /// An error about `field`.
    pub fn field(code: Code, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The body this error is answered with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.number(),
            error: self.code.word(),
            message: self.message.clone(),
            field: self.field.clone(),
        }
    }
}

/// The HTTP status of `code`, as axum takes it.
pub fn http_status(code: Code) -> StatusCode {
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn store_error(e: &StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(detail) => {
            tracing::error!(error = %detail, "store unavailable");
            ApiError::new(
                Code::StoreUnavailable,
                "the token store is unavailable; try again",
            )
        }
        other => {
            tracing::error!(error = %other, "store error");
            ApiError::new(Code::Internal, "internal error")
        }
    }
}

impl From<admin::Error> for ApiError {
    fn from(e: admin::Error) -> Self {
        use admin::Error as E;
        let code = match &e {
            E::Invalid(p) => return ApiError::field(Code::InvalidField, &p.field, &p.reason),
            E::Store(s) => return ApiError::from_store(s, "api"),
            E::RoleTooHigh { .. } => {
                return ApiError::field(Code::RoleTooHigh, "role", e.to_string())
            }
            E::NoCredentials => Code::NoCredentials,
            E::BadSecret => Code::BadSecret,
            E::BadToken(_) => Code::BadToken,
            E::AccountInactive => Code::AccountInactive,
            E::UserInactive => Code::UserInactive,
            E::Forbidden(_) => Code::Forbidden,
            E::NotFound(_) => Code::NotFound,
            E::Conflict(_) => Code::Conflict,
            E::TokenLimit { .. } => Code::TokenLimit,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<crate::domain::ParseError> for ApiError {
    fn from(e: crate::domain::ParseError) -> Self {
        ApiError::field(Code::InvalidField, e.field, e.reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (http_status(self.code), Json(self.body())).into_response();
        // For the audit of refused attempts (`api::audit`), which reads the code, not the body.
        r.extensions_mut().insert(self.code);
        r
    }
}

/// Handlers' result type.
pub type ApiResult<T> = Result<T, ApiError>;
