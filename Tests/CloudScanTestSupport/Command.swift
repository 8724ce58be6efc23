import Dispatch
import Foundation

/// Starts a command with standard input from /dev/null, standard output to `output` (or
/// /dev/null) and standard error to /dev/null. A daemon the command starts (pg_ctlcluster's
/// postmaster) must not hold the test runner's own output open.
func spawn(_ arguments: [String], output: Int32? = nil, closeInChild: Int32? = nil) throws -> pid_t {
    var pid = pid_t()
    let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    if let output {
        posix_spawn_file_actions_adddup2(&actions, output, 1)
    } else {
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    }
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    if let closeInChild { posix_spawn_file_actions_addclose(&actions, closeInChild) }
    let spawned = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
    guard spawned == 0 else { throw POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EINVAL) }
    return pid
}

/// Waits for a child; its exit status, or 128 + the signal that ended it.
func waitForExit(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1, errno == EINTR {}
    let exited = (status & 0x7f) == 0
    return exited ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

/// Runs a command to completion on a thread of its own (never the cooperative pool, nor GCD's
/// global queue, which runs about one blocked thread per core) and returns its exit status.
/// Foundation's `Process.waitUntilExit` can miss the exit of a command that daemonizes a child
/// (pg_ctlcluster), so it is not used here.
public func runCommand(_ arguments: [String]) async throws -> Int32 {
    try await withCheckedThrowingContinuation { continuation in
        onOwnThread {
            continuation.resume(with: Result { waitForExit(try spawn(arguments)) })
        }
    }
}

/// Runs a command and returns its exit status and standard output (standard error is discarded).
public func runCommandCapturingOutput(_ arguments: [String]) async throws -> (status: Int32, output: String) {
    try await withCheckedThrowingContinuation { continuation in
        onOwnThread {
            continuation.resume(
                with: Result {
                    var pipe: [Int32] = [0, 0]
                    guard Glibc.pipe(&pipe) == 0 else { throw POSIXError(.EMFILE) }
                    let pid: pid_t
                    do {
                        pid = try spawn(arguments, output: pipe[1], closeInChild: pipe[0])
                    } catch {
                        close(pipe[0])
                        close(pipe[1])
                        throw error
                    }
                    close(pipe[1])
                    var output = [UInt8]()
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let count = read(pipe[0], &buffer, buffer.count)
                        if count > 0 {
                            output.append(contentsOf: buffer[0..<count])
                        } else if count == 0 || errno != EINTR {
                            break
                        }
                    }
                    close(pipe[0])
                    return (waitForExit(pid), String(decoding: output, as: UTF8.self))
                })
        }
    }
}

/// Runs blocking work on a new thread.
func onOwnThread(_ work: @escaping @Sendable () -> Void) {
    let thread = Thread { work() }
    thread.start()
}

/// A long-running command (a fleet role) started in the background with extra environment;
/// standard output and error go to `logFile`.
public final class BackgroundCommand: Sendable {
    public let pid: pid_t

    public init(_ arguments: [String], environment: [String: String], logFile: String) throws {
        let fd = open(logFile, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        guard fd >= 0 else { throw POSIXError(.EACCES) }
        defer { close(fd) }
        let assignments = environment.map { "\($0.key)=\($0.value)" }
        var pid = pid_t()
        let argv: [UnsafeMutablePointer<CChar>?] =
            (["/usr/bin/env"] + assignments + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fd, 1)
        posix_spawn_file_actions_adddup2(&actions, fd, 2)
        let spawned = posix_spawn(&pid, "/usr/bin/env", &actions, nil, argv, environ)
        guard spawned == 0 else { throw POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EINVAL) }
        self.pid = pid
    }

    /// Waits for the command to exit by itself (on a thread of its own); the exit status.
    public func wait() async -> Int32 {
        let pid = self.pid
        return await withCheckedContinuation { continuation in
            onOwnThread { continuation.resume(returning: waitForExit(pid)) }
        }
    }

    /// Sends a signal and waits for the exit (on a thread of its own); the exit status.
    public func stop(_ signal: Int32 = SIGTERM) async -> Int32 {
        kill(pid, signal)
        let pid = self.pid
        return await withCheckedContinuation { continuation in
            onOwnThread { continuation.resume(returning: waitForExit(pid)) }
        }
    }
}

/// Validates message bodies against topology/schemas/<type>.json with Python's jsonschema
/// (Tests/clients/validate_messages.py): one output line per document, "ok …" or "invalid …".
public func validateMessages(_ documents: [(type: String, body: Data)]) async throws -> (Int32, String) {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("msgs-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    var files: [String] = []
    for (index, document) in documents.enumerated() {
        let wrapper = "{\"type\":\"\(document.type)\",\"body\":\(String(decoding: document.body, as: UTF8.self))}"
        let file = directory.appendingPathComponent(String(format: "%04d.json", index))
        try wrapper.write(to: file, atomically: true, encoding: .utf8)
        files.append(file.path)
    }
    let root = TestDatabase.repositoryRoot
    return try await runCommandCapturingOutput(
        [
            root.appendingPathComponent(".venv/bin/python").path,
            root.appendingPathComponent("Tests/clients/validate_messages.py").path,
            root.appendingPathComponent("topology/schemas").path,
        ] + files)
}
