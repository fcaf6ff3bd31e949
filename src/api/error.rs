//! The one table of answer codes: HTTP status, numeric code and word for every outcome, and the
//! JSON error body `{code, error, message, field?}`.

use crate::admin;
use crate::store::StoreError;
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// Every numeric code the API answers with. The seeds' codes (2000, 2001, 4010–4014) keep their
/// meaning; the rest follow the same scheme: the first three digits are the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 2000: token(s) created.
    TokenCreated = 2000,
    /// 2001: token deleted (revoked).
    TokenDeleted = 2001,
    /// 2002: success.
    Ok = 2002,
    /// 2003: account, user or secret created.
    Created = 2003,
    /// 2004: token regenerated.
    TokenRegenerated = 2004,
    /// 2006: JWT minted.
    JwtCreated = 2006,
    /// 4000: the request could not be read (bad JSON, bad query string).
    MalformedRequest = 4000,
    /// 4010: bad secret.
    BadSecret = 4010,
    /// 4011: bad token.
    BadToken = 4011,
    /// 4012: bad JWT.
    BadJwt = 4012,
    /// 4013: no credentials given.
    NoCredentials = 4013,
    /// 4014: account inactive.
    AccountInactive = 4014,
    /// 4030: the credential may not do this.
    Forbidden = 4030,
    /// 4031: a role above the credential's.
    RoleTooHigh = 4031,
    /// 4040: no such record (or not visible to this credential).
    NotFound = 4040,
    /// 4041: no such route.
    NoRoute = 4041,
    /// 4050: the route exists but not with this method.
    MethodNotAllowed = 4050,
    /// 4080: the request took longer than `server.request_timeout_seconds`.
    RequestTimeout = 4080,
    /// 4090: duplicate, or a change the record's state does not allow.
    Conflict = 4090,
    /// 4091: the account is at `max_tokens`.
    TokenLimit = 4091,
    /// 4092: another run holds the job's period.
    JobBusy = 4092,
    /// 4130: request body too large.
    BodyTooLarge = 4130,
    /// 4150: body is not JSON.
    UnsupportedMediaType = 4150,
    /// 4220: a field has a bad value (`field` names it).
    InvalidField = 4220,
    /// 4221: a field that does not exist (`field` names it).
    UnknownField = 4221,
    /// 5000: internal error.
    Internal = 5000,
    /// 5001: a job run on demand failed (it will be retried).
    JobFailed = 5001,
    /// 5030: the store cannot be reached.
    StoreUnavailable = 5030,
}

impl Code {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        use Code::*;
        match self {
            TokenCreated | Created | JwtCreated => StatusCode::CREATED,
            TokenDeleted | Ok | TokenRegenerated => StatusCode::OK,
            MalformedRequest => StatusCode::BAD_REQUEST,
            BadSecret | BadToken | BadJwt | NoCredentials | AccountInactive => {
                StatusCode::UNAUTHORIZED
            }
            Forbidden | RoleTooHigh => StatusCode::FORBIDDEN,
            NotFound | NoRoute => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Conflict | TokenLimit | JobBusy => StatusCode::CONFLICT,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            InvalidField | UnknownField => StatusCode::UNPROCESSABLE_ENTITY,
            Internal | JobFailed => StatusCode::INTERNAL_SERVER_ERROR,
            StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The word that goes with the code.
    pub fn word(self) -> &'static str {
        use Code::*;
        match self {
            TokenCreated => "TOKEN_CREATED",
            TokenDeleted => "TOKEN_DELETED",
            Ok => "OK",
            Created => "CREATED",
            TokenRegenerated => "TOKEN_REGENERATED",
            JwtCreated => "JWT_CREATED",
            MalformedRequest => "MALFORMED_REQUEST",
            BadSecret => "BAD_SECRET",
            BadToken => "BAD_TOKEN",
            BadJwt => "BAD_JWT",
            NoCredentials => "NO_CREDENTIALS",
            AccountInactive => "ACCOUNT_INACTIVE",
            Forbidden => "FORBIDDEN",
            RoleTooHigh => "ROLE_TOO_HIGH",
            NotFound => "NOT_FOUND",
            NoRoute => "NO_SUCH_ROUTE",
            MethodNotAllowed => "METHOD_NOT_ALLOWED",
            RequestTimeout => "REQUEST_TIMEOUT",
            Conflict => "CONFLICT",
            TokenLimit => "TOKEN_LIMIT_REACHED",
            JobBusy => "JOB_BUSY",
            BodyTooLarge => "BODY_TOO_LARGE",
            UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            InvalidField => "INVALID_FIELD",
            UnknownField => "UNKNOWN_FIELD",
            Internal => "INTERNAL_ERROR",
            JobFailed => "JOB_FAILED",
            StoreUnavailable => "STORE_UNAVAILABLE",
        }
    }

    /// The numeric code.
    pub fn number(self) -> u32 {
        self as u32
    }
}

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
        (self.code.status(), Json(self.body())).into_response()
    }
}

/// Handlers' result type.
pub type ApiResult<T> = Result<T, ApiError>;
