import CloudScanCore
import CloudScanPostgres
import CloudScanStore
import Foundation
import Logging
import ServiceLifecycle

/// `cloudscan sweeper`: reconciles runners (Kubernetes Jobs, or local processes) with scans.
///
/// One instance is active: the one holding a PostgreSQL session-level advisory lock. The others
/// try for it every interval, so when the leader dies (its session ends, the lock goes with it)
/// another takes over within one interval.
///
/// Every interval the leader lists every runner (all pages, or nothing is decided) and every scan
/// that holds or awaits one, and for each scan of the current attempt:
/// - runner **Complete** (`Complete=True`) but the scan still active once the reports had
///   ``Configuration/reportGrace`` to arrive: with the runner's completed report kept and batches
///   missing, or with no findings batches at all → the attempt failed ("results missing"); with
///   batches and no report → completed, reason `runner_report_missing`;
/// - runner **Failed** (`Failed=True`, read by type, never `conditions[0]`) → failed with the
///   condition's reason (`BackoffLimitExceeded`, `DeadlineExceeded`) and the pod's termination
///   message;
/// - **no runner** for a scan dispatched longer than ``Configuration/vanishedGrace`` → vanished;
///   dispatched longer than ``Configuration/startTimeout`` without starting, or running with
///   heartbeats older than ``Configuration/heartbeatTimeout`` → timed out.
/// A vanished, timed-out or result-less attempt is retried while the scan has attempts left (the
/// smaller of its own `max_attempts` and its scan types' maximum): the scan moves to retrying and
/// a scan.retry for the next attempt goes into the outbox, due after an exponential backoff; the
/// dispatcher starts it under a new Job name. Without attempts left the scan fails.
/// Runners of finished scans are removed (Background) once the scan has been finished for
/// ``Configuration/runnerRetention``; runners of superseded attempts, or of scans that are gone,
/// at once. Every move is conditional (status and attempt), so a report that lands meanwhile wins.
public struct Sweeper: Service {
    public struct Configuration: Sendable {
        public var interval: Duration
        /// Seconds a scan may stay dispatched without its runner starting.
        public var startTimeout: Double
        /// Seconds a running scan may go without a heartbeat (the runner sends one every 30 s).
        public var heartbeatTimeout: Double
        /// Seconds after a runner finished during which its reports may still be on their way.
        public var reportGrace: Double
        /// Seconds a dispatched scan may have no runner (the dispatcher creates it after its commit).
        public var vanishedGrace: Double
        /// Seconds a finished scan's runner is kept (its logs stay readable meanwhile).
        public var runnerRetention: Double
        /// The first retry's delay in seconds, doubling per attempt, and the largest.
        public var retryBackoff: (first: Double, maximum: Double)
        /// Attempts per scan type (a scan of several types gets the smallest); 3 when unset.
        public var maximumAttempts: [ScanType: Int]
        /// The advisory lock that elects the leader.
        public var lockKey: Int64

        public init(
            interval: Duration = .seconds(30), startTimeout: Double = 600, heartbeatTimeout: Double = 120,
            reportGrace: Double = 60, vanishedGrace: Double = 60, runnerRetention: Double = 3600,
            retryBackoff: (first: Double, maximum: Double) = (30, 600), maximumAttempts: [ScanType: Int] = [:],
            lockKey: Int64 = 0x636C_6F75_6473_7770  // "cloudswp"
        ) {
            self.interval = interval
            self.startTimeout = startTimeout
            self.heartbeatTimeout = heartbeatTimeout
            self.reportGrace = reportGrace
            self.vanishedGrace = vanishedGrace
            self.runnerRetention = runnerRetention
            self.retryBackoff = retryBackoff
            self.maximumAttempts = maximumAttempts
            self.lockKey = lockKey
        }

        /// The attempts a scan gets: its own `max_attempts`, and its scan types' smallest maximum.
        public func attemptsAllowed(_ scan: ActiveScan) -> Int {
            let byType = scan.scanTypes.map { maximumAttempts[$0] ?? 3 }.min() ?? 3
            return max(1, min(scan.maximumAttempts, byType))
        }

        /// Seconds before the attempt after `attempt` starts.
        public func backoff(afterAttempt attempt: Int) -> Double {
            min(retryBackoff.maximum, retryBackoff.first * pow(2, Double(max(0, attempt - 1))))
        }
    }

    /// A scan that holds or awaits a runner.
    public struct ActiveScan: Sendable, Equatable {
        public var id: UUID
        public var createdAt: Date
        public var organizationID: UUID
        public var projectID: UUID
        public var status: ScanStatus
        public var attempt: Int
        public var maximumAttempts: Int
        public var scanTypes: [ScanType]
        /// Seconds since it was dispatched.
        public var dispatchedAge: Double
        /// Seconds since its last heartbeat (or its start, or its dispatch).
        public var heartbeatAge: Double
        /// The runner's completed report is kept on the scan (batches outstanding).
        public var reported: Bool
        public var expectedBatches: Int?
        public var batchesIn: Int?

        public init(
            id: UUID, createdAt: Date, organizationID: UUID, projectID: UUID, status: ScanStatus, attempt: Int,
            maximumAttempts: Int, scanTypes: [ScanType], dispatchedAge: Double, heartbeatAge: Double, reported: Bool,
            expectedBatches: Int?, batchesIn: Int?
        ) {
            self.id = id
            self.createdAt = createdAt
            self.organizationID = organizationID
            self.projectID = projectID
            self.status = status
            self.attempt = attempt
            self.maximumAttempts = maximumAttempts
            self.scanTypes = scanTypes
            self.dispatchedAge = dispatchedAge
            self.heartbeatAge = heartbeatAge
            self.reported = reported
            self.expectedBatches = expectedBatches
            self.batchesIn = batchesIn
        }
    }

    /// What one pass did.
    public struct PassReport: Sendable, Equatable {
        public var runners = 0
        public var activeRunners = 0
        public var activeScans = 0
        public var retried = 0
        public var failed = 0
        public var completed = 0
        public var removed = 0
        public var seconds = 0.0
        /// Of which listing the runners, and reading the active scans.
        public var listSeconds = 0.0
        public var scansSeconds = 0.0
    }

    /// What to do about a scan (``decide(_:runner:now:configuration:)``).
    public enum Decision: Sendable, Equatable {
        case wait
        case complete(reason: String)
        case fail(reason: String, message: String?)
        /// The attempt failed: retry when attempts are left, else fail.
        case attemptFailed(reason: String, message: String)
    }

    let client: PostgresClient
    let inventory: any RunnerInventory
    let configuration: Configuration
    let logger: Logger
    let onPass: @Sendable (PassReport) -> Void

    public init(
        client: PostgresClient, inventory: any RunnerInventory, configuration: Configuration = .init(),
        logger: Logger, onPass: @escaping @Sendable (PassReport) -> Void = { _ in }
    ) {
        self.client = client
        self.inventory = inventory
        self.configuration = configuration
        self.logger = logger
        self.onPass = onPass
    }

    // MARK: Leadership

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    try await leadWhileHolding()
                } catch is CancellationError {
                    return
                } catch {
                    logger.warning("sweeper: lost the database; trying again", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: configuration.interval)
            }
        }
    }

    /// Tries for the lock on a session of its own; holding it, sweeps every interval until the
    /// session fails or the task is cancelled, then lets the lock go.
    private func leadWhileHolding() async throws {
        try await client.withConnection { session in
            let key = configuration.lockKey
            guard try await session.query("SELECT pg_try_advisory_lock(\(key))").single().decode(Bool.self, at: 0)
            else { return }
            logger.notice("sweeper: leading (advisory lock held)")
            defer { logger.notice("sweeper: no longer leading") }
            while !Task.isCancelled {
                // The session that holds the lock must still be alive: if it is not, the lock is
                // gone and another instance may lead.
                _ = try await session.query("SELECT 1")
                do {
                    let report = try await pass()
                    onPass(report)
                } catch is CancellationError {
                    break
                } catch {
                    logger.warning("sweeper pass failed; nothing decided", metadata: ["error": "\(error)"])
                }
                do {
                    try await Task.sleep(for: configuration.interval)
                } catch {
                    break
                }
            }
            _ = try? await session.query("SELECT pg_advisory_unlock(\(key))")
        }
    }

    // MARK: One pass

    /// One reconciliation; exposed for tests and the benchmark.
    public func pass() async throws -> PassReport {
        let started = ContinuousClock.now
        var report = PassReport()
        let runners = try await inventory.runners()
        report.listSeconds = Self.seconds(since: started)
        let scansStarted = ContinuousClock.now
        let scans = try await activeScans()
        report.scansSeconds = Self.seconds(since: scansStarted)
        report.runners = runners.count
        report.activeRunners = runners.filter { $0.state == .active }.count
        report.activeScans = scans.count
        var current: [String: RunnerRecord] = [:]
        for runner in runners { current[Self.key(runner.scanID, runner.attempt)] = runner }
        let now = Date()

        // 1. Each active scan against its attempt's runner.
        var work: [(ActiveScan, RunnerRecord?, Decision)] = []
        for scan in scans {
            let runner = current[Self.key(scan.id, scan.attempt)]
            let decision = Self.decide(scan, runner: runner, now: now, configuration: configuration)
            if decision != .wait { work.append((scan, runner, decision)) }
        }
        let outcomes = await forEach(work, width: 16) { scan, runner, decision in
            await apply(decision, to: scan, runner: runner)
        }
        for outcome in outcomes {
            switch outcome {
            case .retried: report.retried += 1
            case .failed: report.failed += 1
            case .completed: report.completed += 1
            case .unchanged: break
            }
        }

        // 2. Runners that are not the current attempt of an active scan.
        let activeAttempts = Dictionary(scans.map { ($0.id, $0.attempt) }, uniquingKeysWith: { a, _ in a })
        let others = runners.filter { activeAttempts[$0.scanID] != $0.attempt }
        if !others.isEmpty {
            let states = try await scanStates(Array(Set(others.map(\.scanID))))
            let removals = others.filter {
                Self.shouldRemove($0, scan: states[$0.scanID], configuration: configuration)
            }
            let removed = await forEach(removals.map { ($0, 0, 0) }, width: 8) { runner, _, _ -> Bool in
                do {
                    try await inventory.remove(runner)
                    logger.info("runner removed", metadata: ["runner": "\(runner.name)"])
                    return true
                } catch {
                    logger.warning(
                        "could not remove a runner; next pass",
                        metadata: ["runner": "\(runner.name)", "error": "\(error)"])
                    return false
                }
            }
            report.removed = removed.filter { $0 }.count
        }
        report.seconds = Self.seconds(since: started)
        if report.retried + report.failed + report.completed + report.removed > 0 {
            logger.notice(
                "sweeper pass",
                metadata: [
                    "runners": "\(report.runners)", "active_scans": "\(report.activeScans)",
                    "retried": "\(report.retried)", "failed": "\(report.failed)", "completed": "\(report.completed)",
                    "removed": "\(report.removed)", "seconds": "\(report.seconds)",
                ])
        }
        return report
    }

    static func key(_ scan: UUID, _ attempt: Int) -> String { "\(scan)#\(attempt)" }

    static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    /// What a scan's state and its runner's call for (pure: the tests drive every case through it).
    public static func decide(
        _ scan: ActiveScan, runner: RunnerRecord?, now: Date, configuration: Configuration
    ) -> Decision {
        guard let runner else {
            if scan.status == .dispatched, scan.dispatchedAge >= configuration.vanishedGrace {
                return .attemptFailed(
                    reason: "runner_vanished", message: "no runner for attempt \(scan.attempt)")
            }
            if scan.status == .running, scan.heartbeatAge >= configuration.heartbeatTimeout {
                return .attemptFailed(
                    reason: "runner_vanished",
                    message: "no runner, and no heartbeat for \(Self.wholeSeconds(scan.heartbeatAge)) s")
            }
            return .wait
        }
        switch runner.state {
        case .active:
            if scan.status == .dispatched, scan.dispatchedAge >= configuration.startTimeout {
                return .attemptFailed(
                    reason: "timed_out",
                    message: "the runner did not start within \(Self.wholeSeconds(configuration.startTimeout)) s"
                )
            }
            if scan.status == .running, scan.heartbeatAge >= configuration.heartbeatTimeout {
                return .attemptFailed(
                    reason: "timed_out", message: "no heartbeat for \(Self.wholeSeconds(scan.heartbeatAge)) s")
            }
            return .wait
        case .succeeded:
            guard Self.graceOver(runner, now: now, configuration: configuration) else { return .wait }
            if scan.reported {
                return .attemptFailed(
                    reason: "runner_results_missing",
                    message:
                        "the runner completed, but \(scan.batchesIn ?? 0) of \(scan.expectedBatches ?? 0) findings batches arrived"
                )
            }
            if let batches = scan.batchesIn, batches > 0 {
                return .complete(reason: "runner_report_missing")
            }
            return .attemptFailed(
                reason: "runner_results_missing", message: "the runner completed without a report or findings")
        case .failed(let reason, let message):
            guard Self.graceOver(runner, now: now, configuration: configuration) else { return .wait }
            return .fail(reason: reason, message: message)
        }
    }

    /// Seconds for a message, from a value read from the database (which may be NaN or infinite).
    static func wholeSeconds(_ value: Double) -> Int {
        value.isFinite ? Int(min(max(value, 0), 1e12)) : 0
    }

    static func graceOver(_ runner: RunnerRecord, now: Date, configuration: Configuration) -> Bool {
        guard let finishedAt = runner.finishedAt else { return true }
        return now.timeIntervalSince(finishedAt) >= configuration.reportGrace
    }

    /// The state of a runner's scan, when it is not the runner's active attempt.
    public struct ScanState: Sendable, Equatable {
        public var status: ScanStatus
        public var attempt: Int
        public var finishedAge: Double?

        public init(status: ScanStatus, attempt: Int, finishedAge: Double?) {
            self.status = status
            self.attempt = attempt
            self.finishedAge = finishedAge
        }
    }

    /// Whether a runner that is not its scan's active attempt goes now.
    public static func shouldRemove(_ runner: RunnerRecord, scan: ScanState?, configuration: Configuration) -> Bool {
        guard let scan else { return true }  // its scan is gone (retention)
        if scan.attempt != runner.attempt { return true }  // superseded (or never current)
        if scan.status == .retrying { return true }  // the failed attempt's Job: the next one gets its own
        if scan.status.isFinal {
            if runner.state == .active { return true }  // finished scan, runner still going: stop it
            return (scan.finishedAge ?? .infinity) >= configuration.runnerRetention
        }
        return false
    }

    // MARK: Effects

    enum Outcome {
        case retried, failed, completed, unchanged
    }

    private func apply(_ decision: Decision, to scan: ActiveScan, runner: RunnerRecord?) async -> Outcome {
        do {
            switch decision {
            case .wait:
                return .unchanged
            case .complete(let reason):
                let moved = try await move(scan, to: .completed, reason: reason, message: nil)
                return moved ? .completed : .unchanged
            case .fail(let reason, let message):
                var text = message
                if let runner, let words = await inventory.terminationMessage(runner), words != message {
                    text = [message, words].compactMap { $0 }.joined(separator: "; ")
                }
                let moved = try await move(scan, to: .failed, reason: reason, message: text)
                return moved ? .failed : .unchanged
            case .attemptFailed(let reason, let message):
                let allowed = configuration.attemptsAllowed(scan)
                guard scan.attempt < allowed else {
                    let moved = try await move(
                        scan, to: .failed, reason: reason,
                        message: "\(message) (attempt \(scan.attempt) of \(allowed), none left)")
                    if moved, let runner { try? await inventory.remove(runner) }
                    return moved ? .failed : .unchanged
                }
                let moved = try await retry(scan, reason: reason, message: message)
                // The failed attempt's runner goes (a retry runs under a new name).
                if moved, let runner { try? await inventory.remove(runner) }
                return moved ? .retried : .unchanged
            }
        } catch {
            logger.warning(
                "sweeper could not act on a scan; next pass",
                metadata: [
                    "scan_id": "\(scan.id.uuidString.lowercased())", "decision": "\(decision)", "error": "\(error)",
                ])
            return .unchanged
        }
    }

    private func target(_ scan: ActiveScan) -> ScanTransitions.Target {
        .init(
            scanID: scan.id, createdAt: scan.createdAt, organizationID: scan.organizationID, projectID: scan.projectID)
    }

    private func move(_ scan: ActiveScan, to status: ScanStatus, reason: String, message: String?) async throws -> Bool
    {
        let moved = try await client.withTransaction(organizationID: scan.organizationID) { c in
            try await ScanTransitions.move(
                c, target(scan), from: scan.status, to: status, attempt: scan.attempt, actor: "sweeper",
                reason: reason, messageID: nil, failureMessage: message.map { String($0.prefix(2000)) },
                details: message.map { .object(["message": .string(String($0.prefix(1000)))]) },
                expectedAttempt: scan.attempt)
        }
        if moved {
            logger.notice(
                "sweeper moved a scan",
                metadata: [
                    "scan_id": "\(scan.id.uuidString.lowercased())", "to": "\(status.rawValue)", "reason": "\(reason)",
                ])
        }
        return moved
    }

    /// The scan → retrying, and scan.retry for the next attempt in the outbox, due after the backoff.
    private func retry(_ scan: ActiveScan, reason: String, message: String) async throws -> Bool {
        let delay = configuration.backoff(afterAttempt: scan.attempt)
        let next = scan.attempt + 1
        let moved = try await client.withTransaction(organizationID: scan.organizationID) { c -> Bool in
            guard
                try await ScanTransitions.move(
                    c, target(scan), from: scan.status, to: .retrying, attempt: scan.attempt, actor: "sweeper",
                    reason: reason, messageID: nil,
                    details: .object([
                        "message": .string(String(message.prefix(1000))), "next_attempt": .int(next),
                        "retry_in_seconds": .double(delay),
                    ]), expectedAttempt: scan.attempt)
            else { return false }
            try await c.execute(
                """
                UPDATE scans SET next_attempt_at = now() + make_interval(secs => \(delay))
                WHERE id = \(scan.id) AND created_at = \(scan.createdAt)
                """)
            let command = ScanRetryMessage(
                scanID: scan.id, organizationID: scan.organizationID, attempt: next, reason: reason,
                requestedAt: Date())
            let payload = PostgresJSONB(
                text: String(decoding: try MessageCoding.encoder().encode(command), as: UTF8.self))
            let headers = try PostgresJSONB(encoding: [
                MessageHeaders.organizationID: scan.organizationID.uuidString.lowercased()
            ])
            try await c.execute(
                """
                INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, correlation_id,
                                    headers, payload, available_at)
                VALUES (\(scan.organizationID), \(UUID()), \(Exchanges.commands), 'scan.retry',
                        \(MessageType.scanRetry.rawValue), \(scan.id.uuidString.lowercased()), \(headers), \(payload),
                        now() + make_interval(secs => \(delay)))
                """)
            return true
        }
        if moved {
            logger.notice(
                "sweeper scheduled a retry",
                metadata: [
                    "scan_id": "\(scan.id.uuidString.lowercased())", "reason": "\(reason)", "next_attempt": "\(next)",
                    "in_seconds": "\(delay)",
                ])
        }
        return moved
    }

    // MARK: Reading

    func activeScans() async throws -> [ActiveScan] {
        let rows = try await client.query(
            """
            SELECT id, created_at, organization_id, project_id, status, attempt, max_attempts, scan_types,
                   dispatched_age, heartbeat_age, reported, expected_batches, batches_in
            FROM sweeper_active_scans()
            """)
        return try rows.map { row in
            ActiveScan(
                id: try row.decode(UUID.self, at: 0), createdAt: try row.decode(Date.self, at: 1),
                organizationID: try row.decode(UUID.self, at: 2), projectID: try row.decode(UUID.self, at: 3),
                status: ScanStatus(rawValue: try row.decode(String.self, at: 4)) ?? .running,
                attempt: try row.decode(Int.self, at: 5), maximumAttempts: try row.decode(Int.self, at: 6),
                scanTypes: try row.decode([String].self, at: 7).compactMap(ScanType.init(rawValue:)),
                dispatchedAge: try row.decode(Double?.self, at: 8) ?? 0,
                heartbeatAge: try row.decode(Double?.self, at: 9) ?? 0,
                reported: try row.decode(Bool.self, at: 10), expectedBatches: try row.decode(Int?.self, at: 11),
                batchesIn: try row.decode(Int?.self, at: 12))
        }
    }

    func scanStates(_ ids: [UUID]) async throws -> [UUID: ScanState] {
        var states: [UUID: ScanState] = [:]
        for chunk in stride(from: 0, to: ids.count, by: 5000) {
            let slice = ids[chunk..<min(ids.count, chunk + 5000)].map(\.uuidString)
            let rows = try await client.query(
                "SELECT id, status, attempt, finished_age FROM sweeper_scans(\(slice)::uuid[])")
            for row in rows {
                states[try row.decode(UUID.self, at: 0)] = ScanState(
                    status: ScanStatus(rawValue: try row.decode(String.self, at: 1)) ?? .failed,
                    attempt: try row.decode(Int.self, at: 2), finishedAge: try row.decode(Double?.self, at: 3))
            }
        }
        return states
    }

    /// Runs `body` over `items`, at most `width` at once; results in any order.
    private func forEach<A: Sendable, B: Sendable, C: Sendable, R: Sendable>(
        _ items: [(A, B, C)], width: Int, _ body: @escaping @Sendable (A, B, C) async -> R
    ) async -> [R] {
        await withTaskGroup(of: R.self) { group in
            var results: [R] = []
            var next = 0
            while next < items.count && next < width {
                let item = items[next]
                group.addTask { await body(item.0, item.1, item.2) }
                next += 1
            }
            while let result = await group.next() {
                results.append(result)
                if next < items.count {
                    let item = items[next]
                    group.addTask { await body(item.0, item.1, item.2) }
                    next += 1
                }
            }
            return results
        }
    }
}
