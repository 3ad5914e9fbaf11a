//! Operators' roles and the one table of what each admin RPC needs. `viewer` reads; `operator` also changes work
//! (submit, cancel, retry, drain, quarantine replay, venv warm-up); `admin` also manages identity (join and login
//! tokens, revocation, CA rotation). The controller checks every admin call against [`AdminRpc::needs`] at its edge; tests read
//! the same table. Pure data, no I/O.

use std::fmt;
use std::str::FromStr;

/// An operator's role; a higher one may do everything a lower one may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of viewer, operator, admin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a role: viewer, operator or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        Role::ALL.into_iter().find(|r| r.as_str() == text).ok_or_else(|| UnknownRole(text.to_owned()))
    }
}

macro_rules! admin_rpcs {
    ($($rpc:ident => $role:ident),+ $(,)?) => {
        /// Every RPC of `outpost.v1.AdminService`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum AdminRpc { $($rpc),+ }

        impl AdminRpc {
            pub const ALL: &'static [AdminRpc] = &[$(AdminRpc::$rpc),+];

            /// The role a caller needs: the one table.
            pub fn needs(self) -> Role {
                match self { $(AdminRpc::$rpc => Role::$role),+ }
            }

            /// Its name in the protocol (`ListTasks`).
            pub fn name(self) -> &'static str {
                match self { $(AdminRpc::$rpc => stringify!($rpc)),+ }
            }
        }
    };
}

admin_rpcs! {
    ListTasks => Viewer,
    GetTask => Viewer,
    ListWorkers => Viewer,
    GetWorker => Viewer,
    GetStats => Viewer,
    ExplainTask => Viewer,
    ListQuarantined => Viewer,
    SubmitTask => Operator,
    RetryTask => Operator,
    CancelTask => Operator,
    DrainWorker => Operator,
    ReplayQuarantined => Operator,
    WarmVenvs => Operator,
    CreateJoinToken => Admin,
    ListJoinTokens => Admin,
    RevokeJoinToken => Admin,
    RevokeWorker => Admin,
    CreateUiToken => Admin,
    RevokeUiToken => Admin,
    ListAuditEvents => Viewer,
    RotateCa => Admin,
    ActivateCa => Admin,
    RetireCa => Admin,
    GetCaStatus => Viewer,
}

impl AdminRpc {
    /// Whether it changes anything (then it is audited, a refusal included); reads are not audited. A new RPC
    /// counts as a change until it is listed here.
    pub fn changes(self) -> bool {
        use AdminRpc::*;
        !matches!(
            self,
            ListTasks
                | GetTask
                | ListWorkers
                | GetWorker
                | GetStats
                | ExplainTask
                | ListQuarantined
                | ListJoinTokens
                | ListAuditEvents
                | GetCaStatus
        )
    }

    pub fn from_name(name: &str) -> Option<AdminRpc> {
        AdminRpc::ALL.iter().copied().find(|rpc| rpc.name() == name)
    }
}

/// `NAME=ROLE`: the role of an admin certificate issued before roles (`spiffe://<td>/admin/<name>`), for a
/// migration period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyAdmin {
    pub name: String,
    pub role: Role,
}

/// Why an `--admin-role` value is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadLegacyAdmin {
    #[error("{0:?} is not NAME=ROLE")]
    NotPair(String),
    #[error(transparent)]
    Role(#[from] UnknownRole),
}

impl FromStr for LegacyAdmin {
    type Err = BadLegacyAdmin;
    fn from_str(text: &str) -> Result<LegacyAdmin, BadLegacyAdmin> {
        let (name, role) = text.split_once('=').ok_or_else(|| BadLegacyAdmin::NotPair(text.to_owned()))?;
        Ok(LegacyAdmin { name: name.trim().to_owned(), role: role.trim().parse()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert_eq!("root".parse::<Role>(), Err(UnknownRole("root".into())));
        assert_eq!("ops=viewer".parse::<LegacyAdmin>(), Ok(LegacyAdmin { name: "ops".into(), role: Role::Viewer }));
        assert!("ops".parse::<LegacyAdmin>().is_err());
    }

    #[test]
    fn every_rpc_of_the_admin_service_has_exactly_one_entry() {
        let descriptor = crate::pb::FILE_DESCRIPTOR_SET;
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(descriptor).unwrap();
        let service = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "AdminService")
            .expect("AdminService in the descriptor set");
        let mut names: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        names.sort();
        let mut table: Vec<&str> = AdminRpc::ALL.iter().map(|rpc| rpc.name()).collect();
        table.sort();
        assert_eq!(names, table, "the protocol's AdminService and the role table name the same RPCs");
    }
}
