//! Opaque cursors for keyset pagination: the client hands back what it was given and cannot
//! forge a position that skips or repeats rows (a bad cursor is a 400).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::ApiError;

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: i64 = 20;
/// The largest page a client may ask for.
pub const MAX_LIMIT: i64 = 100;

/// `?limit=&cursor=` of a paginated list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size (1-100, default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Cuts `rows` (fetched with `limit + 1`) to one page; when there was a further row, returns
/// the cursor of the page's last row too.
pub fn page<T>(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().map(cursor_of);
    (rows, next)
}

/// Checks a requested page size.
pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    let limit = requested.unwrap_or(DEFAULT_LIMIT);
    crate::domain::in_range("limit", limit, 1, MAX_LIMIT)
}

/// Encodes a (score, id) position.
pub fn encode(score: f32, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{:08x}.{}", score.to_bits(), id.simple()))
}

/// Decodes a cursor made by [`encode`].
pub fn decode(cursor: &str) -> Result<(f32, Uuid), ApiError> {
    let invalid = || ApiError::bad_request("invalid_cursor", "The cursor is not one this API issued.");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (bits, id) = text.split_once('.').ok_or_else(invalid)?;
    let bits = u32::from_str_radix(bits, 16).map_err(|_| invalid())?;
    let score = f32::from_bits(bits);
    if !score.is_finite() {
        return Err(invalid());
    }
    Ok((score, Uuid::parse_str(id).map_err(|_| invalid())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_exactly_and_garbage_is_refused() {
        let id = Uuid::now_v7();
        assert_eq!(decode(&encode(0.123_456_7, id)).unwrap(), (0.123_456_7, id));
        assert!(decode("not-a-cursor").is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode("7fc00000.0")).is_err());
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_follow() {
        assert_eq!(page(vec![1, 2, 3], 3, |n| n.to_string()), (vec![1, 2, 3], None));
        assert_eq!(
            page(vec![1, 2, 3, 4], 3, |n| n.to_string()),
            (vec![1, 2, 3], Some("3".to_owned()))
        );
    }

    #[test]
    fn page_sizes_outside_the_range_are_refused() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(MAX_LIMIT + 1)).is_err());
    }
}
