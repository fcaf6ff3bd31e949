//! The one table of answer codes: every numeric code the daemon answers with, its HTTP status
//! and its word. The management API maps its errors here (`api::error`) and verification maps its
//! outcomes here (`verdict::Outcome::code`), so a number means one thing wherever it appears.

/// Every numeric code the daemon answers with. The seeds' codes (2000, 2001, 4010–4014) keep their
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
    /// 2005: a verification: the call may proceed and its cost was consumed.
    Verified = 2005,
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
    /// 4015: a verification: the token is revoked.
    TokenRevoked = 4015,
    /// 4016: a verification: the token is past its expiry.
    TokenExpired = 4016,
    /// 4017: the user the token was issued for is inactive (verification and management).
    UserInactive = 4017,
    /// 4030: the credential may not do this.
    Forbidden = 4030,
    /// 4031: a role above the credential's.
    RoleTooHigh = 4031,
    /// 4032: a verification: the client IP is not among the token's allowed ones.
    IpNotAllowed = 4032,
    /// 4033: a verification: the call is outside the token's scopes.
    ScopeDenied = 4033,
    /// 4034: a verification: an account secret (or a JWT it signed) while the account's secret
    /// calls are off.
    SecretCallsOff = 4034,
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
    /// 4290: a verification: the token's (or the JWT's) uses are spent.
    UsageExceeded = 4290,
    /// 4291: a verification: the account's monthly quota would be passed.
    AccountQuotaExceeded = 4291,
    /// 4292: a verification: the token's or the account's rate limit has no room left in this
    /// window (forward auth adds `Retry-After`).
    RateLimited = 4292,
    /// 5000: internal error.
    Internal = 5000,
    /// 5001: a job run on demand failed (it will be retried).
    JobFailed = 5001,
    /// 5030: the store cannot be reached.
    StoreUnavailable = 5030,
}

impl Code {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        use Code::*;
        match self {
            TokenCreated | Created | JwtCreated => 201,
            TokenDeleted | Ok | TokenRegenerated | Verified => 200,
            MalformedRequest => 400,
            BadSecret | BadToken | BadJwt | NoCredentials | AccountInactive | TokenRevoked
            | TokenExpired | UserInactive => 401,
            Forbidden | RoleTooHigh | IpNotAllowed | ScopeDenied | SecretCallsOff => 403,
            NotFound | NoRoute => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            Conflict | TokenLimit | JobBusy => 409,
            BodyTooLarge => 413,
            UnsupportedMediaType => 415,
            InvalidField | UnknownField => 422,
            Internal | JobFailed => 500,
            UsageExceeded | AccountQuotaExceeded | RateLimited => 429,
            StoreUnavailable => 503,
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
            Verified => "VALID",
            JwtCreated => "JWT_CREATED",
            MalformedRequest => "MALFORMED_REQUEST",
            BadSecret => "BAD_SECRET",
            BadToken => "BAD_TOKEN",
            BadJwt => "BAD_JWT",
            NoCredentials => "NO_CREDENTIALS",
            AccountInactive => "ACCOUNT_INACTIVE",
            TokenRevoked => "REVOKED",
            TokenExpired => "EXPIRED",
            UserInactive => "USER_INACTIVE",
            Forbidden => "FORBIDDEN",
            RoleTooHigh => "ROLE_TOO_HIGH",
            IpNotAllowed => "IP_NOT_ALLOWED",
            ScopeDenied => "SCOPE_DENIED",
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
            UsageExceeded => "USAGE_EXCEEDED",
            AccountQuotaExceeded => "ACCOUNT_QUOTA_EXCEEDED",
            RateLimited => "RATE_LIMITED",
            SecretCallsOff => "SECRET_CALLS_OFF",
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
