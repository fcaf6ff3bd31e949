//! Token, account and user status, and the status a token has at a given instant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// A token's status as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    /// Usable.
    Active,
    /// Past `expires_at`.
    Expired,
    /// `remaining` reached 0.
    Exhausted,
    /// Revoked by someone; kept for audit.
    Revoked,
}

impl TokenStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "active",
            TokenStatus::Expired => "expired",
            TokenStatus::Exhausted => "exhausted",
            TokenStatus::Revoked => "revoked",
        }
    }

    /// The status at `now`, whatever the jobs have written so far: time-based state is decided
    /// at the moment of the check. Revocation wins, then expiry, then exhaustion.
    pub fn effective(
        stored: TokenStatus,
        expires_at: Option<DateTime<Utc>>,
        remaining: Option<i64>,
        now: DateTime<Utc>,
    ) -> TokenStatus {
        if stored == TokenStatus::Revoked {
            TokenStatus::Revoked
        } else if expires_at.is_some_and(|e| e <= now) {
            TokenStatus::Expired
        } else if remaining.is_some_and(|r| r <= 0) {
            TokenStatus::Exhausted
        } else {
            TokenStatus::Active
        }
    }
}

impl FromStr for TokenStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(TokenStatus::Active),
            "expired" => Ok(TokenStatus::Expired),
            "exhausted" => Ok(TokenStatus::Exhausted),
            "revoked" => Ok(TokenStatus::Revoked),
            _ => Err("must be one of active, expired, exhausted, revoked".into()),
        }
    }
}

/// An account's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Its credentials work.
    Active,
    /// Its credentials are refused with 4014.
    Inactive,
}

impl AccountStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Inactive => "inactive",
        }
    }
}

impl FromStr for AccountStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(AccountStatus::Active),
            "inactive" => Ok(AccountStatus::Inactive),
            _ => Err("must be active or inactive".into()),
        }
    }
}

/// A user's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    /// Its tokens work.
    Active,
    /// Its tokens are refused with USER_INACTIVE until it is active again.
    Inactive,
    /// Deleted: its tokens are revoked and it stays listed for the record. Final.
    Deleted,
}

impl UserStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Inactive => "inactive",
            UserStatus::Deleted => "deleted",
        }
    }
}

impl FromStr for UserStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(UserStatus::Active),
            "inactive" => Ok(UserStatus::Inactive),
            "deleted" => Ok(UserStatus::Deleted),
            _ => Err("must be active, inactive or deleted".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn expiry_is_decided_at_the_moment_of_the_check() {
        let exp = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let before = exp - chrono::TimeDelta::milliseconds(1);
        use TokenStatus::*;
        assert_eq!(
            TokenStatus::effective(Active, Some(exp), None, before),
            Active
        );
        assert_eq!(
            TokenStatus::effective(Active, Some(exp), None, exp),
            Expired
        );
        assert_eq!(
            TokenStatus::effective(Active, None, Some(0), exp),
            Exhausted
        );
        assert_eq!(
            TokenStatus::effective(Revoked, Some(exp), Some(0), exp),
            Revoked
        );
    }
}
