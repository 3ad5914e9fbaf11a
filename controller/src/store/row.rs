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
