import Dispatch
import Foundation

/// Runs a command to completion (posix_spawn + waitpid on a GCD thread, never on the cooperative
/// pool) and returns its exit status. Foundation's `Process.waitUntilExit` can miss the exit of a
/// command that daemonizes a child (pg_ctlcluster), so it is not used here.
public func runCommand(_ arguments: [String]) async throws -> Int32 {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            var pid = pid_t()
            let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            // The daemon a command may start must not hold the test runner's output open.
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            let spawned = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
            guard spawned == 0 else {
                continuation.resume(throwing: POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EINVAL))
                return
            }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
            let exited = (status & 0x7f) == 0
            continuation.resume(returning: exited ? (status >> 8) & 0xff : 128 + (status & 0x7f))
        }
    }
}

/// Runs a command and returns its exit status and standard output (standard error is discarded).
public func runCommandCapturingOutput(_ arguments: [String]) async throws -> (status: Int32, output: String) {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            var pipe: [Int32] = [0, 0]
            guard Glibc.pipe(&pipe) == 0 else {
                continuation.resume(throwing: POSIXError(.EMFILE))
                return
            }
            var pid = pid_t()
            let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addclose(&actions, pipe[0])
            let spawned = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
            close(pipe[1])
            guard spawned == 0 else {
                close(pipe[0])
                continuation.resume(throwing: POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EINVAL))
                return
            }
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
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
            let exited = (status & 0x7f) == 0
            continuation.resume(
                returning: (
                    exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), String(decoding: output, as: UTF8.self)
                ))
        }
    }
}
