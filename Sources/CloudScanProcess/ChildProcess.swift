import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Child processes in a process group of their own (so a whole tree can be signalled), started
/// with `posix_spawn` and reaped on a thread of their own.
///
/// Foundation's `Process` is not used: on Linux it notices an exit only once every grandchild has
/// closed the inherited descriptors, so a killed child looked alive while its children lived.
public enum ChildProcess {
    public struct SpawnError: Error, CustomStringConvertible, Sendable {
        public var message: String
        public var description: String { message }
    }

    /// How a child ended.
    public enum Ending: Sendable, Equatable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)
        /// Killed (SIGTERM, then SIGKILL after the grace) because it ran past its time limit.
        case timedOut

        public var description: String {
            switch self {
            case .exited(let code): "exited with \(code)"
            case .signaled(let signal): "killed by signal \(signal)"
            case .timedOut: "timed out"
            }
        }
    }

    /// posix_spawn in a new process group: stdin from /dev/null, stdout/stderr to files (or
    /// inherited), in `directory`. `command[0]` is an absolute path (see ``resolve(_:path:)``).
    public static func spawn(
        _ command: [String], environment: [String: String], directory: String, stdout: String? = nil,
        stderr: String? = nil
    ) throws -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if let stdout {
            posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        }
        if let stderr {
            posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        }
        // glibc ≥ 2.29 has it, but its header hides it without _GNU_SOURCE: look it up.
        typealias AddChdir =
            @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np")
        else { throw SpawnError(message: "posix_spawn_file_actions_addchdir_np is missing (glibc < 2.29)") }
        _ = unsafeBitCast(symbol, to: AddChdir.self)(&actions, directory)
        let argv = command.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, command[0], &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw SpawnError(message: "cannot start \(command[0]): \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// Blocks the calling thread until `pid` exits; returns its wait status.
    public static func waitBlocking(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        return status
    }

    public static func ending(waitStatus status: Int32) -> Ending {
        let signal = status & 0x7f
        return signal != 0 ? .signaled(signal) : .exited((status >> 8) & 0xff)
    }

    /// Runs a command to its end or its time limit (then SIGTERM to its group, SIGKILL after
    /// `grace`); whatever it left in its group is killed when it exits.
    public static func run(
        _ command: [String], environment: [String: String], directory: String, stdout: String? = nil,
        stderr: String? = nil, timeout: Duration, grace: Duration = .seconds(5)
    ) async throws -> Ending {
        let pid = try spawn(command, environment: environment, directory: directory, stdout: stdout, stderr: stderr)
        let state = TimeoutState()
        let watchdog = Task {
            try await Task.sleep(for: timeout)
            state.markTimedOut()
            kill(-pid, SIGTERM)
            try await Task.sleep(for: grace)
            kill(-pid, SIGKILL)
        }
        let status: Int32 = await withCheckedContinuation { continuation in
            let thread = Thread {
                let status = waitBlocking(pid)
                kill(-pid, SIGKILL)
                continuation.resume(returning: status)
            }
            thread.name = "cloudscan-child-reaper"
            thread.start()
        }
        watchdog.cancel()
        return state.timedOut ? .timedOut : ending(waitStatus: status)
    }

    /// The first executable `name` on `path` (colon-separated), or `name` itself if it has a slash.
    public static func resolve(_ name: String, path: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

private final class TimeoutState: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    func markTimedOut() { lock.withLock { flag = true } }
    var timedOut: Bool { lock.withLock { flag } }
}
