//! Roles, ordered: `admin` > `engineer` > `user` > `readonly`.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// A token's or user's role. The derived order is the privilege order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May only show itself.
    Readonly,
    /// May only show itself; the default role of a new token.
    User,
    /// May create tokens up to `engineer` and manage the ones its own user issued.
    Engineer,
    /// May create any token and manage every token of its account.
    Admin,
}

/// Every role's spelling, highest first.
pub const NAMES: [&str; 4] = ["admin", "engineer", "user", "readonly"];

impl Role {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Readonly => "readonly",
            Role::User => "user",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }

    /// Whether a credential of this role may create, list, update and revoke tokens.
    pub fn may_manage_tokens(self) -> bool {
        self >= Role::Engineer
    }
}

/// The role a token acts with: its own, capped by its user's current role (`None`: a token
/// issued for no user). Verification, forward auth, JWTs and management all use this one.
pub fn effective(token: Role, user: Option<Role>) -> Role {
    user.map_or(token, |u| token.min(u))
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "readonly" => Ok(Role::Readonly),
            "user" => Ok(Role::User),
            "engineer" => Ok(Role::Engineer),
            "admin" => Ok(Role::Admin),
            _ => Err("must be one of admin, engineer, user, readonly".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_the_privilege_order() {
        assert!(Role::Admin > Role::Engineer);
        assert!(Role::Engineer > Role::User);
        assert!(Role::User > Role::Readonly);
        assert!(Role::Engineer.may_manage_tokens() && !Role::User.may_manage_tokens());
    }

    #[test]
    fn a_token_acts_with_the_lower_of_its_role_and_its_users() {
        assert_eq!(effective(Role::Admin, Some(Role::Readonly)), Role::Readonly);
        assert_eq!(effective(Role::User, Some(Role::Admin)), Role::User);
        assert_eq!(effective(Role::Engineer, None), Role::Engineer);
    }

    #[test]
    fn parses_its_own_spelling_only() {
        for r in [Role::Admin, Role::Engineer, Role::User, Role::Readonly] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
    }
}
