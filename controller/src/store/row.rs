//! Reading a row by column name, whichever connection it came from: the writer's (rusqlite) or the read pool's
//! (sqlx). Each row type is mapped once, over [`Columns`]; nothing here runs a query.

use sqlx::Row as _;

use super::Error;

/// The typed columns of one result row.
pub(super) trait Columns {
    fn int(&self, name: &str) -> Result<i64, Error>;
    fn opt_int(&self, name: &str) -> Result<Option<i64>, Error>;
    fn text(&self, name: &str) -> Result<String, Error>;
    fn opt_text(&self, name: &str) -> Result<Option<String>, Error>;
}

fn unreadable(name: &str, error: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("column {name}: {error}"))
}

/// Implements [`Columns`] for a row type whose typed getter is `$get(name)`.
macro_rules! columns {
    ($row:ty, $get:ident) => {
        impl Columns for $row {
            fn int(&self, name: &str) -> Result<i64, Error> {
                self.$get(name).map_err(|e| unreadable(name, e))
            }
            fn opt_int(&self, name: &str) -> Result<Option<i64>, Error> {
                self.$get(name).map_err(|e| unreadable(name, e))
            }
            fn text(&self, name: &str) -> Result<String, Error> {
                self.$get(name).map_err(|e| unreadable(name, e))
            }
            fn opt_text(&self, name: &str) -> Result<Option<String>, Error> {
                self.$get(name).map_err(|e| unreadable(name, e))
            }
        }
    };
}

columns!(rusqlite::Row<'_>, get);
columns!(sqlx::sqlite::SqliteRow, try_get);

/// A stored integer as the type it stands for (a count, an epoch, slots); one out of its range is a corrupt row.
pub(super) fn narrow<T: TryFrom<i64>>(what: &str, value: i64) -> Result<T, Error> {
    T::try_from(value).map_err(|_| Error::Corrupt(format!("{what} out of range: {value}")))
}

/// A `COUNT`/`SUM` of rows for display and placement: never negative, and saturating (no pool holds four billion
/// tasks).
pub(super) fn count(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

/// An unsigned number (an epoch, a limit) as SQLite's integer; one past `i64::MAX` cannot be stored.
pub(super) fn stored(what: &str, value: impl TryInto<i64> + Copy + std::fmt::Display) -> Result<i64, Error> {
    value.try_into().map_err(|_| Error::Corrupt(format!("{what} too large to store: {value}")))
}
