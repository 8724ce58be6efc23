internal import CProcessControl

/// What a process that holds secrets does before it runs code it does not trust.
public enum ProcessProtection {
    /// Makes this process non-dumpable: its `/proc/<pid>` entries (the environment with the runner
    /// token and broker URL, memory, maps) belong to root from now on, and no process of the same
    /// user may ptrace it. Children do not inherit it (exec resets it), so scanners run normally.
    @discardableResult
    public static func forbidInspection() -> Bool { cloudscan_set_undumpable() == 0 }

    /// Whether this process may be inspected (dumpable).
    public static var inspectable: Bool { cloudscan_is_dumpable() == 1 }
}
