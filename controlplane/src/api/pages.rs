//! Pagination of list answers: `?page=N&per_page=M` (1-based; `per_page` up to
//! [`MAX_PER_PAGE`], default [`DEFAULT_PER_PAGE`]). A list answer's `data` holds the
//! page's `items` and a `pagination` object with the totals.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::envelope::ApiError;

/// Items per page unless asked otherwise.
pub(crate) const DEFAULT_PER_PAGE: usize = 50;
/// Items per page at most.
pub(crate) const MAX_PER_PAGE: usize = 500;

/// A requested page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) page: usize,
    pub(crate) per_page: usize,
}

impl Page {
    /// Reads `page` and `per_page` from a query string's pairs.
    pub(crate) fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let num = |key: &str, default: usize, max: usize| -> Result<usize, ApiError> {
            match q.get(key) {
                None => Ok(default),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ if max == usize::MAX => Err(ApiError::bad_request(format!(
                        "{key} must be a whole number of at least 1, not {v:?}"
                    ))),
                    _ => Err(ApiError::bad_request(format!(
                        "{key} must be a whole number from 1 to {max}, not {v:?}"
                    ))),
                },
            }
        };
        Ok(Self {
            page: num("page", 1, usize::MAX)?,
            per_page: num("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?,
        })
    }

    /// This page of `items`, and the `pagination` object.
    pub(crate) fn slice<T: Clone>(&self, items: &[T]) -> (Vec<T>, Value) {
        let total = items.len();
        let start = (self.page - 1).saturating_mul(self.per_page).min(total);
        let end = start.saturating_add(self.per_page).min(total);
        let pagination = json!({
            "page": self.page,
            "per_page": self.per_page,
            "total": total,
            "total_pages": total.div_ceil(self.per_page),
        });
        (items[start..end].to_vec(), pagination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn pages_slice_and_count() {
        let items: Vec<u32> = (1..=7).collect();
        let p = Page::parse(&q(&[("page", "2"), ("per_page", "3")])).unwrap();
        let (page, meta) = p.slice(&items);
        assert_eq!(page, vec![4, 5, 6]);
        assert_eq!(
            meta,
            json!({"page": 2, "per_page": 3, "total": 7, "total_pages": 3})
        );
        let (page, _) = Page::parse(&q(&[("page", "9"), ("per_page", "3")]))
            .unwrap()
            .slice(&items);
        assert!(page.is_empty());
        assert_eq!(
            Page::parse(&q(&[])).unwrap(),
            Page {
                page: 1,
                per_page: DEFAULT_PER_PAGE
            }
        );
    }

    #[test]
    fn bad_values_say_the_range() {
        for (k, v) in [("page", "0"), ("per_page", "501"), ("page", "x")] {
            let e = Page::parse(&q(&[(k, v)])).unwrap_err();
            assert_eq!(e.code, "invalid_parameter");
            assert!(
                e.message.starts_with(&format!("{k} must be")),
                "{}",
                e.message
            );
        }
    }
}
