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
