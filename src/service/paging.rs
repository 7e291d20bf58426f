//! Paging for every list RPC: `page_size` (default 50, at most 1000) and an opaque `page_token`
//! that is a keyset position (creation time and id of the last item returned), so pages stay
//! stable while rows are added.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::Violations;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;

/// Where a page starts: after the item created at `created_at` with id `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page, 1..=MAX_PAGE_SIZE.
    pub size: i64,
    pub after: Option<Cursor>,
}

/// One page and the cursor of the next one, if there are more items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl PageRequest {
    /// Parses `page_size` (0 = default; larger than the maximum is capped) and `page_token`,
    /// adding a violation per bad field.
    pub fn parse(page_size: i32, page_token: &str, violations: &mut Violations) -> Option<Self> {
        let size = match i64::from(page_size) {
            0 => Some(DEFAULT_PAGE_SIZE),
            n if n < 0 => {
                violations.add("page_size", "must not be negative");
                None
            }
            n => Some(n.min(MAX_PAGE_SIZE)),
        };
        let after = if page_token.is_empty() {
            Some(None)
        } else {
            match Cursor::decode(page_token) {
                Some(cursor) => Some(Some(cursor)),
                None => {
                    violations.add(
                        "page_token",
                        "not a token returned by this list call; omit it to start from the first page",
                    );
                    None
                }
            }
        };
        Some(Self {
            size: size?,
            after: after?,
        })
    }

    /// The first page of `size` items.
    pub fn first(size: i64) -> Self {
        Self { size, after: None }
    }

    /// How many rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        self.size + 1
    }

    /// Cuts the fetched rows to the page and computes the next cursor.
    pub fn page<T>(&self, mut rows: Vec<T>, position: impl Fn(&T) -> Cursor) -> Page<T> {
        let more = rows.len() as i64 > self.size;
        rows.truncate(self.size as usize);
        let next = if more {
            rows.last().map(position)
        } else {
            None
        };
        Page { items: rows, next }
    }
}

/// A position in a list that is computed afresh for every page (PreviewMatches): an offset, tied
/// to a digest of the request it belongs to so that a token is refused with another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetToken;

impl OffsetToken {
    pub fn encode(offset: usize, request_digest: &[u8]) -> String {
        let digest = hex::encode(&request_digest[..request_digest.len().min(8)]);
        URL_SAFE_NO_PAD.encode(format!("o1|{offset}|{digest}"))
    }

    /// The offset of `token`, if it is one that [`OffsetToken::encode`] made for this request.
    pub fn decode(token: &str, request_digest: &[u8]) -> Option<usize> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut parts = raw.split('|');
        if parts.next()? != "o1" {
            return None;
        }
        let offset: usize = parts.next()?.parse().ok()?;
        let digest = parts.next()?;
        let expected = hex::encode(&request_digest[..request_digest.len().min(8)]);
        (parts.next().is_none() && digest == expected).then_some(offset)
    }
}

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = format!("v1|{}|{}", self.created_at.timestamp_micros(), self.id);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(token: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut parts = raw.split('|');
        if parts.next()? != "v1" {
            return None;
        }
        let micros: i64 = parts.next()?.parse().ok()?;
        let id: Uuid = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros)?,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_tokens_belong_to_their_request() {
        let token = OffsetToken::encode(150, b"digest one");
        assert_eq!(OffsetToken::decode(&token, b"digest one"), Some(150));
        assert_eq!(OffsetToken::decode(&token, b"digest two"), None);
        assert_eq!(OffsetToken::decode("garbage", b"digest one"), None);
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not-a-token"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("v2|1|x")), None);
    }

    #[test]
    fn page_size_defaults_caps_and_rejects_negative() {
        let mut v = Violations::default();
        assert_eq!(PageRequest::parse(0, "", &mut v).unwrap().size, 50);
        assert_eq!(PageRequest::parse(5000, "", &mut v).unwrap().size, 1000);
        assert!(v.is_empty());
        assert!(PageRequest::parse(-1, "bad", &mut v).is_none());
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn page_cuts_one_extra_row_into_a_next_cursor() {
        let request = PageRequest::first(2);
        let at = DateTime::from_timestamp_micros(1).unwrap();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let page = request.page(ids.clone(), |id| Cursor {
            created_at: at,
            id: *id,
        });
        assert_eq!(page.items, ids[..2]);
        assert_eq!(page.next.unwrap().id, ids[1]);
        let last = request.page(ids[..2].to_vec(), |id| Cursor {
            created_at: at,
            id: *id,
        });
        assert_eq!(last.next, None);
    }
}
