//! Request values parsed into domain types in one place ("parse, don't validate"): once a
//! handler holds an [`Email`] or a [`NewPassword`], it is valid.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A role of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A fan: queues, holds, pays.
    Customer,
    /// Sets up venues, events and shows; checks tickets in.
    Organizer,
    /// Everything an organizer can, plus managing roles.
    Admin,
}

impl Role {
    /// The role's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Organizer => "organizer",
            Self::Admin => "admin",
        }
    }

    /// Parses a stored role name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "customer" => Some(Self::Customer),
            "organizer" => Some(Self::Organizer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Whether the role may use the organizer API.
    pub fn can_organize(self) -> bool {
        matches!(self, Self::Organizer | Self::Admin)
    }
}

/// A syntactically valid e-mail address, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses an address: one `@`, a local part of 1-64 characters, a dotted domain of valid
    /// labels, at most 254 characters, no whitespace or control characters.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request("invalid_email", "The e-mail address is not valid.");
        let value = raw.trim().to_lowercase();
        if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = value.split_once('@').ok_or_else(invalid)?;
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return Err(invalid());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |label: &&str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(invalid());
        }
        Ok(Self(value))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Passwords nobody should be allowed to choose, however long.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password123",
    "1234567890",
    "12345678910",
    "qwertyuiop",
    "iloveyou12",
    "letmein123",
    "welcome123",
    "administrator",
    "floodgate",
    "floodgate1",
    "changeme123",
    "qwerty12345",
    "1q2w3e4r5t",
    "0123456789",
    "abcdefghij",
];

/// A password acceptable for a new account: 10 to 128 characters (the cap bounds the cost of
/// hashing), not a well-known password, not one character repeated, not the e-mail itself.
pub struct NewPassword(String);

impl NewPassword {
    /// Checks the password against the rules above.
    pub fn parse(raw: &str, email: &Email) -> Result<Self, ApiError> {
        let weak = |why: &str| ApiError::bad_request("weak_password", format!("The password is too weak: {why}."));
        let length = raw.chars().count();
        if length < 10 {
            return Err(weak("use at least 10 characters"));
        }
        if length > 128 {
            return Err(weak("use at most 128 characters"));
        }
        let lowered = raw.to_lowercase();
        if COMMON_PASSWORDS.contains(&lowered.as_str()) {
            return Err(weak("it is one of the most common passwords"));
        }
        let mut chars = raw.chars();
        let first = chars.next();
        if chars.all(|c| Some(c) == first) {
            return Err(weak("it repeats a single character"));
        }
        let local = email.as_str().split('@').next().unwrap_or_default();
        if lowered == email.as_str() || (local.len() >= 4 && lowered.contains(local)) {
            return Err(weak("it contains the e-mail address"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The password, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Trims `raw` and checks that it has between `min` and `max` characters.
pub fn text(field: &'static str, raw: &str, min: usize, max: usize) -> Result<String, ApiError> {
    let value = raw.trim();
    let length = value.chars().count();
    if length < min || length > max {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("`{field}` must have between {min} and {max} characters."),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("`{field}` must not contain control characters."),
        ));
    }
    Ok(value.to_owned())
}

/// A price tier name: 1-32 characters of lower-case letters, digits, `_` and `-`.
pub fn tier(raw: &str) -> Result<String, ApiError> {
    let valid = !raw.is_empty()
        && raw.len() <= 32
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::bad_request(
            "invalid_tier",
            format!(
                "Tier `{}` must be 1-32 characters of a-z, 0-9, `_` or `-`.",
                raw.chars().take(40).collect::<String>()
            ),
        ))
    }
}

/// An ISO 4217 currency code: three upper-case letters.
pub fn currency(raw: &str) -> Result<String, ApiError> {
    if raw.len() == 3 && raw.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::bad_request(
            "invalid_currency",
            "`currency` must be an ISO 4217 code such as EUR.",
        ))
    }
}

/// An IANA time-zone name such as `Europe/Amsterdam` or `UTC`. Checked for shape only: the
/// service does not ship a time-zone database.
pub fn timezone(raw: &str) -> Result<String, ApiError> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
        && !raw.starts_with('/')
        && !raw.ends_with('/')
        && !raw.contains("//");
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::bad_request(
            "invalid_timezone",
            "`timezone` must be an IANA name such as Europe/Amsterdam.",
        ))
    }
}

/// Checks that an integer lies in `min..=max`.
pub fn in_range<T: PartialOrd + fmt::Display + Copy>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ApiError> {
    if value < min || value > max {
        return Err(ApiError::bad_request(
            "out_of_range",
            format!("`{field}` must be between {min} and {max}."),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lower_cased_and_malformed_ones_refused() {
        assert_eq!(Email::parse(" Fan@Example.COM ").unwrap().as_str(), "fan@example.com");
        for bad in [
            "",
            "fan",
            "fan@",
            "@example.com",
            "fan@example",
            "fan@@example.com",
            "f an@example.com",
            "fan@-example.com",
            "fan@example..com",
            "'; DROP TABLE app_user; --@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn weak_passwords_are_refused_and_strong_ones_accepted() {
        let email = Email::parse("jane.doe@example.com").unwrap();
        for weak in [
            "short",
            "password123",
            "aaaaaaaaaaaa",
            "jane.doe@example.com",
            "xxjane.doexx1",
        ] {
            assert!(NewPassword::parse(weak, &email).is_err(), "{weak} should be refused");
        }
        assert!(NewPassword::parse(&"x".repeat(129), &email).is_err());
        assert!(NewPassword::parse("correct horse battery staple", &email).is_ok());
    }

    #[test]
    fn tiers_currencies_and_time_zones_have_a_strict_shape() {
        assert!(tier("floor").is_ok());
        assert!(tier("VIP").is_err());
        assert!(tier("a b").is_err());
        assert!(currency("EUR").is_ok());
        assert!(currency("eur").is_err());
        assert!(timezone("Europe/Amsterdam").is_ok());
        assert!(timezone("UTC").is_ok());
        assert!(timezone("../etc/passwd").is_err());
    }
}
