import CloudScanKubernetes
import CloudScanProcess
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Runners as child processes on this machine (`cloudscan dev`, the README's run command): the
/// same contract as a Job — the runner's environment, a deadline (the scan's timeout plus a grace),
/// cancel as SIGTERM then SIGKILL — with at most ``maximumConcurrent`` at once; the rest wait in
/// order. Each exit is reported on ``outcomes``.
public final class LocalProcessBackend: JobBackend {
    public struct Outcome: Sendable, Equatable {
        public enum Ending: Sendable, Equatable {
            case exited(Int32)
            case signaled(Int32)
            case timedOut
            case canceled
            case failedToStart(String)
        }
        public var scanID: UUID
        public var organizationID: UUID
        public var attempt: Int
        public var ending: Ending
    }

    public struct Configuration: Sendable {
        /// The runner command (default: this executable's `runner` subcommand).
        public var command: [String]
        public var maximumConcurrent: Int
        /// Extra seconds past the scan's timeout before the runner is stopped (as activeDeadlineSeconds).
        public var deadlineGraceSeconds: Int
        /// Between SIGTERM and SIGKILL.
        public var killGrace: Duration
        /// Added to the runner's environment (the broker URL, PATH, …).
        public var environment: [String: String]
        /// The runner's working directory parent; each runner gets a scratch directory below it.
        public var scratchRoot: String

        public init(
            command: [String], maximumConcurrent: Int = 2, deadlineGraceSeconds: Int = 60,
            killGrace: Duration = .seconds(10), environment: [String: String] = [:],
            scratchRoot: String = FileManager.default.temporaryDirectory.appendingPathComponent("cloudscan-runners")
                .path
        ) {
            self.command = command
            self.maximumConcurrent = maximumConcurrent
            self.deadlineGraceSeconds = deadlineGraceSeconds
            self.killGrace = killGrace
            self.environment = environment
            self.scratchRoot = scratchRoot
        }
    }

    private struct Running {
        /// The runner's pid, also its process group (every scanner it starts is in it).
        var pid: pid_t
        var assignment: RunnerAssignment
        var stopping: Outcome.Ending?
    }

    private struct State {
        var running: [String: Running] = [:]
        var waiting: [RunnerAssignment] = []
        /// Attempts that ended (or were stopped before they began): starting them again does nothing.
        var finished: Set<String> = []
        /// How each ended, until the sweeper removes it (``RunnerInventory``).
        var ended: [String: RunnerRecord] = [:]
    }

    public let configuration: Configuration
    private let state = Mutex(State())
    private let logger: Logger
    public let outcomes: AsyncStream<Outcome>
    private let outcomesContinuation: AsyncStream<Outcome>.Continuation

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        (outcomes, outcomesContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(10_000))
    }

    static func key(_ scanID: UUID, _ attempt: Int) -> String { "\(scanID.uuidString.lowercased())-\(attempt)" }

    /// Runners running now, and waiting for a slot.
    public var counts: (running: Int, waiting: Int) { state.withLock { ($0.running.count, $0.waiting.count) } }

    public func start(_ assignment: RunnerAssignment) async throws {
        let key = Self.key(assignment.scanID, assignment.attempt)
        let launch: Bool = state.withLock { state in
            if state.running[key] != nil || state.finished.contains(key)
                || state.waiting.contains(where: { Self.key($0.scanID, $0.attempt) == key })
            {
                return false
            }
            if state.running.count < configuration.maximumConcurrent { return true }
            state.waiting.append(assignment)
            return false
        }
        if launch { spawn(assignment) }
    }

    public func stop(scanID: UUID, attempt: Int) async throws {
        let key = Self.key(scanID, attempt)
        let (pid, waiting): (pid_t?, RunnerAssignment?) = state.withLock { state in
            if let index = state.waiting.firstIndex(where: { Self.key($0.scanID, $0.attempt) == key }) {
                state.finished.insert(key)
                let waiting = state.waiting.remove(at: index)
                state.ended[key] = Self.record(waiting, .canceled)
                return (nil, waiting)
            }
            guard var running = state.running[key] else {
                state.finished.insert(key)
                return (nil, nil)
            }
            running.stopping = running.stopping ?? .canceled
            state.running[key] = running
            return (running.pid, nil)
        }
        if let waiting {
            outcomesContinuation.yield(
                Outcome(
                    scanID: waiting.scanID, organizationID: waiting.organizationID, attempt: waiting.attempt,
                    ending: .canceled))
        }
        if let pid { terminate(key, pid) }
    }

    /// SIGTERM to the runner's process group (its scanners too), then SIGKILL after the grace if
    /// the runner has not exited.
    private func terminate(_ key: String, _ pid: pid_t) {
        guard isRunning(key, pid) else { return }
        kill(-pid, SIGTERM)
        let grace = configuration.killGrace
        Task { [weak self] in
            try? await Task.sleep(for: grace)
            if let self, self.isRunning(key, pid) { kill(-pid, SIGKILL) }
        }
    }

    private func isRunning(_ key: String, _ pid: pid_t) -> Bool {
        state.withLock { $0.running[key]?.pid == pid }
    }

    private func spawn(_ assignment: RunnerAssignment) {
        let key = Self.key(assignment.scanID, assignment.attempt)
        typealias Env = RunnerAssignment.Environment
        var environment = ProcessInfo.processInfo.environment.filter {
            ["PATH", "LANG", "LC_ALL", "TZ"].contains($0.key)
        }
        environment.merge(configuration.environment) { _, new in new }
        let scratch = URL(fileURLWithPath: configuration.scratchRoot).appendingPathComponent(key)
        try? FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        environment[Env.scanID] = assignment.scanID.uuidString.lowercased()
        environment[Env.organizationID] = assignment.organizationID.uuidString.lowercased()
        environment[Env.attempt] = String(assignment.attempt)
        environment[Env.scanTypes] = assignment.scanTypes.map(\.rawValue).joined(separator: ",")
        environment[Env.artifactURL] = assignment.artifactURL
        environment[Env.artifactSHA256] = assignment.artifactSHA256
        environment[Env.timeoutSeconds] = String(assignment.timeoutSeconds)
        environment[Env.runnerToken] = assignment.runnerToken
        environment[Env.traceparent] = assignment.traceparent
        environment[Env.scannerOptions] = assignment.scannerOptions
        environment["HOME"] = scratch.path
        environment["TMPDIR"] = scratch.path

        let pid: pid_t
        do {
            pid = try Self.spawnProcessGroup(
                configuration.command, environment: environment, directory: scratch.path)
        } catch {
            state.withLock {
                $0.finished.insert(key)
                $0.ended[key] = Self.record(assignment, .failedToStart("\(error)"))
            }
            outcomesContinuation.yield(
                Outcome(
                    scanID: assignment.scanID, organizationID: assignment.organizationID, attempt: assignment.attempt,
                    ending: .failedToStart("\(error)")))
            startWaiting()
            return
        }
        state.withLock { $0.running[key] = Running(pid: pid, assignment: assignment) }
        logger.info(
            "runner started",
            metadata: [
                "scan_id": "\(assignment.scanID.uuidString.lowercased())", "attempt": "\(assignment.attempt)",
                "pid": "\(pid)",
            ])
        // Reap it on a thread of its own (waitpid blocks).
        let reaper = Thread { [weak self] in
            let status = ChildProcess.waitBlocking(pid)
            kill(-pid, SIGKILL)  // whatever it left behind in its group
            self?.exited(key, status: status, scratch: scratch)
        }
        reaper.name = "cloudscan-runner-reaper"
        reaper.start()
        let deadline = Duration.seconds(assignment.timeoutSeconds + configuration.deadlineGraceSeconds)
        Task { [weak self] in
            try? await Task.sleep(for: deadline)
            guard let self else { return }
            let expired: Bool = self.state.withLock { state in
                guard var running = state.running[key], running.pid == pid else { return false }
                running.stopping = running.stopping ?? .timedOut
                state.running[key] = running
                return true
            }
            if expired { self.terminate(key, pid) }
        }
    }

    static func spawnProcessGroup(_ command: [String], environment: [String: String], directory: String) throws -> pid_t
    {
        do {
            return try ChildProcess.spawn(command, environment: environment, directory: directory)
        } catch {
            throw JobBackendError(permanent: true, reason: "runner_not_started", message: "\(error)")
        }
    }

    private func exited(_ key: String, status: Int32, scratch: URL) {
        let ended: (Running, Outcome.Ending)? = state.withLock { state in
            state.finished.insert(key)
            guard let running = state.running.removeValue(forKey: key) else { return nil }
            let ending: Outcome.Ending
            let signal = status & 0x7f
            if let stopping = running.stopping {
                ending = stopping
            } else if signal != 0 {
                ending = .signaled(signal)
            } else {
                ending = .exited((status >> 8) & 0xff)
            }
            state.ended[key] = Self.record(running.assignment, ending)
            return (running, ending)
        }
        try? FileManager.default.removeItem(at: scratch)
        if let (running, ending) = ended {
            logger.info(
                "runner exited",
                metadata: [
                    "scan_id": "\(running.assignment.scanID.uuidString.lowercased())",
                    "attempt": "\(running.assignment.attempt)",
                    "ending": "\(ending)",
                ])
            outcomesContinuation.yield(
                Outcome(
                    scanID: running.assignment.scanID, organizationID: running.assignment.organizationID,
                    attempt: running.assignment.attempt, ending: ending))
        }
        startWaiting()
    }

    private func startWaiting() {
        let next: RunnerAssignment? = state.withLock { state in
            guard state.running.count < configuration.maximumConcurrent, !state.waiting.isEmpty else { return nil }
            return state.waiting.removeFirst()
        }
        if let next { spawn(next) }
    }
}

extension LocalProcessBackend: RunnerInventory {
    /// A runner's record as a Job's would read: exit 0 is Complete; any other ending is Failed
    /// with a reason in the Job controller's style.
    static func record(_ assignment: RunnerAssignment, _ ending: Outcome.Ending?) -> RunnerRecord {
        let state: RunnerRecord.State
        switch ending {
        case nil: state = .active
        case .exited(0): state = .succeeded
        case .exited(let code): state = .failed(reason: "RunnerFailed", message: "runner exited \(code)")
        case .signaled(let signal):
            state = .failed(reason: "RunnerFailed", message: "runner killed by signal \(signal)")
        case .timedOut: state = .failed(reason: "DeadlineExceeded", message: "runner ran past its deadline")
        case .canceled: state = .failed(reason: "Canceled", message: nil)
        case .failedToStart(let why): state = .failed(reason: "RunnerNotStarted", message: why)
        }
        return RunnerRecord(
            name: assignment.jobName, scanID: assignment.scanID, organizationID: assignment.organizationID,
            attempt: assignment.attempt, state: state, finishedAt: ending == nil ? nil : Date())
    }

    public func runners() async throws -> [RunnerRecord] {
        state.withLock { state in
            state.running.values.map { Self.record($0.assignment, nil) } + state.waiting.map { Self.record($0, nil) }
                + Array(state.ended.values)
        }
    }

    public func terminationMessage(_ runner: RunnerRecord) async -> String? {
        if case .failed(_, let message) = runner.state { return message }
        return nil
    }

    public func remove(_ runner: RunnerRecord) async throws {
        try await stop(scanID: runner.scanID, attempt: runner.attempt)
        _ = state.withLock { $0.ended.removeValue(forKey: Self.key(runner.scanID, runner.attempt)) }
    }
}
