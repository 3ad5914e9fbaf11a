//! This machine's host name (a pod's name on Kubernetes, a task's on ECS), read the one way both binaries use:
//! the kernel's (`/proc/sys/kernel/hostname`, what gethostname(2) answers in this UTS namespace), else `HOSTNAME`.

/// The host name, or `None` when neither source has one.
pub fn name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernels_name_is_read() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(super::name().as_deref(), Some(kernel.trim()));
    }
}
