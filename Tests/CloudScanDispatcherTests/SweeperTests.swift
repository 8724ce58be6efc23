import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanPostgres
import CloudScanTestSupport
import Foundation
import KubernetesStandIn
import Testing

/// The sweeper's decisions, case by case (pure), and its effects against live PostgreSQL, the
/// Kubernetes stand-in and a running dispatcher.
@Suite("Sweeper")
struct SweeperTests {
    static let configuration = Sweeper.Configuration(
        startTimeout: 600, heartbeatTimeout: 120, reportGrace: 60, vanishedGrace: 60, runnerRetention: 3600,
        retryBackoff: (30, 600), maximumAttempts: [.sca: 2])

    static func scan(
        _ status: ScanStatus = .running, attempt: Int = 1, dispatchedAge: Double = 10, heartbeatAge: Double = 10,
        reported: Bool = false, expected: Int? = nil, batchesIn: Int? = nil, types: [ScanType] = [.sast]
    ) -> Sweeper.ActiveScan {
        Sweeper.ActiveScan(
            id: UUID(), createdAt: Date(), organizationID: UUID(), projectID: UUID(), status: status, attempt: attempt,
            maximumAttempts: 3, scanTypes: types, dispatchedAge: dispatchedAge, heartbeatAge: heartbeatAge,
            reported: reported, expectedBatches: expected, batchesIn: batchesIn)
    }

    static func runner(
        _ scan: Sweeper.ActiveScan, _ state: RunnerRecord.State, finishedSecondsAgo: Double? = nil
    ) -> RunnerRecord {
        RunnerRecord(
            name: RunnerAssignment.jobName(scanID: scan.id, attempt: scan.attempt), scanID: scan.id,
            organizationID: scan.organizationID, attempt: scan.attempt, state: state,
            finishedAt: finishedSecondsAgo.map { Date().addingTimeInterval(-$0) })
    }

    @Test("every case: vanished, not started, stale heartbeats, Complete with and without results, Failed, graces")
    func decisions() {
        let c = Self.configuration
        let now = Date()
        func decide(_ scan: Sweeper.ActiveScan, _ runner: RunnerRecord?) -> Sweeper.Decision {
            Sweeper.decide(scan, runner: runner, now: now, configuration: c)
        }
        // No runner: within the grace the dispatcher may still be creating it.
        #expect(decide(Self.scan(.dispatched, dispatchedAge: 30), nil) == .wait)
        #expect(
            decide(Self.scan(.dispatched, dispatchedAge: 61), nil)
                == .attemptFailed(reason: "runner_vanished", message: "no runner for attempt 1"))
        #expect(decide(Self.scan(.running, heartbeatAge: 30), nil) == .wait)
        if case .attemptFailed(let reason, _) = decide(Self.scan(.running, heartbeatAge: 121), nil) {
            #expect(reason == "runner_vanished")
        } else {
            Issue.record("a running scan without runner or heartbeat must fail its attempt")
        }
        // An active runner: the start timeout and stale heartbeats.
        let waiting = Self.scan(.dispatched, dispatchedAge: 599)
        #expect(decide(waiting, Self.runner(waiting, .active)) == .wait)
        let notStarted = Self.scan(.dispatched, dispatchedAge: 600)
        #expect(
            decide(notStarted, Self.runner(notStarted, .active))
                == .attemptFailed(reason: "timed_out", message: "the runner did not start within 600 s"))
        let stale = Self.scan(.running, heartbeatAge: 300)
        #expect(
            decide(stale, Self.runner(stale, .active))
                == .attemptFailed(reason: "timed_out", message: "no heartbeat for 300 s"))
        let healthy = Self.scan(.running, dispatchedAge: 5000, heartbeatAge: 20)
        #expect(decide(healthy, Self.runner(healthy, .active)) == .wait)
        // Complete: reports get their grace; then batches without a report complete the scan,
        // anything else is an attempt without its results.
        let done = Self.scan(.running, batchesIn: 3)
        #expect(decide(done, Self.runner(done, .succeeded, finishedSecondsAgo: 10)) == .wait)
        #expect(
            decide(done, Self.runner(done, .succeeded, finishedSecondsAgo: 61))
                == .complete(reason: "runner_report_missing"))
        let empty = Self.scan(.running, batchesIn: 0)
        #expect(
            decide(empty, Self.runner(empty, .succeeded, finishedSecondsAgo: 61))
                == .attemptFailed(
                    reason: "runner_results_missing", message: "the runner completed without a report or findings"))
        let partial = Self.scan(.running, reported: true, expected: 4, batchesIn: 3)
        #expect(
            decide(partial, Self.runner(partial, .succeeded, finishedSecondsAgo: 61))
                == .attemptFailed(
                    reason: "runner_results_missing",
                    message: "the runner completed, but 3 of 4 findings batches arrived"))
        let neverStarted = Self.scan(.dispatched)
        if case .attemptFailed = decide(neverStarted, Self.runner(neverStarted, .succeeded, finishedSecondsAgo: 61)) {
        } else {
            Issue.record("a Complete Job whose scan never started has no results")
        }
        // Failed: the condition's reason, after the same grace.
        let failed = Self.scan(.running)
        let failure = RunnerRecord.State.failed(reason: "DeadlineExceeded", message: "Job was active longer")
        #expect(decide(failed, Self.runner(failed, failure, finishedSecondsAgo: 5)) == .wait)
        #expect(
            decide(failed, Self.runner(failed, failure, finishedSecondsAgo: 61))
                == .fail(reason: "DeadlineExceeded", message: "Job was active longer"))
    }

    @Test("runner removal: superseded and orphaned at once, finished scans' after the retention, active ones kept")
    func removals() {
        let c = Self.configuration
        let scan = Self.scan()
        let old = RunnerRecord(
            name: "x-1", scanID: scan.id, organizationID: scan.organizationID, attempt: 1, state: .succeeded)
        #expect(Sweeper.shouldRemove(old, scan: nil, configuration: c), "its scan is gone")
        #expect(
            Sweeper.shouldRemove(old, scan: .init(status: .running, attempt: 2, finishedAge: nil), configuration: c))
        #expect(
            Sweeper.shouldRemove(old, scan: .init(status: .retrying, attempt: 1, finishedAge: nil), configuration: c))
        let young = Sweeper.ScanState(status: .completed, attempt: 1, finishedAge: 3599)
        #expect(Sweeper.shouldRemove(old, scan: young, configuration: c) == false, "kept for its retention")
        #expect(
            Sweeper.shouldRemove(old, scan: .init(status: .completed, attempt: 1, finishedAge: 3600), configuration: c))
        var running = old
        running.state = .active
        #expect(
            Sweeper.shouldRemove(running, scan: .init(status: .canceled, attempt: 1, finishedAge: 1), configuration: c),
            "a finished scan's runner that still runs is stopped")
        let current = Sweeper.ScanState(status: .running, attempt: 1, finishedAge: nil)
        #expect(Sweeper.shouldRemove(running, scan: current, configuration: c) == false, "the current attempt's")
        // Attempts: the scan's own limit and its types' (sca: 2); backoff doubles up to the cap.
        #expect(c.attemptsAllowed(Self.scan(types: [.sast])) == 3)
        #expect(c.attemptsAllowed(Self.scan(types: [.sast, .sca])) == 2)
        #expect(
            [1, 2, 3, 6, 9].map { c.backoff(afterAttempt: $0) } == [30, 60, 120, 600, 600])
    }
}

/// The sweeper against live PostgreSQL, the Kubernetes stand-in and a running dispatcher.
@Suite("Sweeper (live PostgreSQL and RabbitMQ, Kubernetes stand-in)")
struct SweeperLiveTests {
    static func sweeper(_ h: DispatcherHarness, _ configuration: Sweeper.Configuration) -> Sweeper {
        let kube = KubernetesClient(
            configuration: .init(
                server: h.standIn.server, namespace: DispatcherHarness.namespace, token: KubernetesStandIn.adminToken))
        return Sweeper(
            client: h.app,
            inventory: KubernetesJobBackend(
                client: kube, builder: JobSpecBuilder(configuration: .init(namespace: DispatcherHarness.namespace)),
                logger: TestDatabase.logger("sweeper")),
            configuration: configuration, logger: TestDatabase.logger("sweeper"))
    }

    /// A scan created and dispatched (its attempt's Job exists).
    static func dispatched(_ h: DispatcherHarness) async throws -> UUID {
        let scan = try await h.createScan().id
        try await h.eventually("dispatched with its Job") { try await h.dispatchedWithJob(scan) }
        return scan
    }

    static func sql(_ h: DispatcherHarness, _ text: String) async throws {
        try await h.app.withTransaction(organizationID: h.organization) { c in
            try await c.executeScript(text)
        }
    }

    /// As the status writer records a started runner, heartbeats `heartbeatAgo` seconds ago.
    static func running(_ h: DispatcherHarness, _ scan: UUID, heartbeatAgo: Int = 0) async throws {
        try await sql(
            h,
            """
            UPDATE scans SET status = 'running', started_at = now(),
                   heartbeat_at = now() - interval '\(heartbeatAgo) seconds'
            WHERE id = '\(scan)'
            """)
    }

    static func failure(_ h: DispatcherHarness, _ scan: UUID) async throws -> (String?, String?) {
        try await h.app.withTransaction(organizationID: h.organization) { c in
            let row = try await c.query("SELECT failure_reason, failure_message FROM scans WHERE id = \(scan)").single()
            return (try row.decode(String?.self, at: 0), try row.decode(String?.self, at: 1))
        }
    }

    /// The scan.retry rows in the outbox for `scan`: (attempt, seconds until due).
    static func retries(_ h: DispatcherHarness, _ scan: UUID) async throws -> [(
        payload: String, attempt: Int, due: Double
    )] {
        try await h.app.withTransaction(organizationID: h.organization) { c in
            try await c.query(
                """
                SELECT payload::text, (payload->>'attempt')::int, extract(epoch FROM available_at - created_at)::float8
                FROM outbox WHERE routing_key = 'scan.retry' AND correlation_id = \(scan.uuidString.lowercased())
                ORDER BY id
                """
            ).map {
                (try $0.decode(String.self, at: 0), try $0.decode(Int.self, at: 1), try $0.decode(Double.self, at: 2))
            }
        }
    }

    /// What the relay does with a due scan.retry row: publish it to the commands exchange.
    static func relay(_ h: DispatcherHarness, _ payload: String) async throws {
        try await h.publishRaw(
            Data(payload.utf8), type: MessageType.scanRetry.rawValue, routingKey: "scan.retry",
            organization: h.organization)
    }

    @Test(
        "a Failed Job: the scan fails with the condition's reason (BackoffLimitExceeded, DeadlineExceeded) and the pod's termination message"
    )
    func failedJobs() async throws {
        try await DispatcherHarness.run { h in
            let crashed = try await Self.dispatched(h)
            let late = try await Self.dispatched(h)
            try await Self.running(h, crashed)
            try await Self.running(h, late)
            await h.standIn.cluster.failJob(
                namespace: DispatcherHarness.namespace, name: RunnerAssignment.jobName(scanID: crashed, attempt: 1),
                exitCode: 2, terminationMessage: "archive_path_escape: ../../etc/passwd")
            await h.standIn.cluster.failJob(
                namespace: DispatcherHarness.namespace, name: RunnerAssignment.jobName(scanID: late, attempt: 1),
                reason: "DeadlineExceeded")
            var configuration = Sweeper.Configuration(reportGrace: 3600)
            // Within the grace its own failed report may still be on its way: nothing yet.
            var report = try await Self.sweeper(h, configuration).pass()
            #expect(report.failed == 0 && report.runners == 2 && report.activeRunners == 0)
            #expect(try await h.status(crashed).0 == .running)
            configuration.reportGrace = 0
            report = try await Self.sweeper(h, configuration).pass()
            #expect(report.failed == 2)
            #expect(try await h.status(crashed).0 == .failed)
            #expect(try await h.status(late).0 == .failed)
            let (reason, message) = try await Self.failure(h, crashed)
            #expect(reason == "BackoffLimitExceeded")
            #expect(
                message?.contains("runner exited 2: archive_path_escape: ../../etc/passwd") == true, "\(message ?? "-")"
            )
            let (lateReason, lateMessage) = try await Self.failure(h, late)
            #expect(lateReason == "DeadlineExceeded")
            #expect(lateMessage?.contains("active longer than specified deadline") == true, "\(lateMessage ?? "-")")
            #expect(try await h.events(crashed).last == "failed")
            // A second pass changes nothing (the moves are conditional; Jobs stay for their retention).
            report = try await Self.sweeper(h, configuration).pass()
            #expect(report.failed == 0 && report.removed == 0)
        }
    }

    @Test(
        "a Complete Job without a report: with findings batches → completed; without → retried under a new Job name, the old Job deleted"
    )
    func completeWithoutReport() async throws {
        try await DispatcherHarness.run { h in
            let withBatches = try await Self.dispatched(h)
            let withNothing = try await Self.dispatched(h)
            try await Self.running(h, withBatches)
            try await Self.running(h, withNothing)
            try await Self.sql(
                h,
                """
                INSERT INTO scan_findings_batches (organization_id, scan_id, scan_created_at, attempt, batch_index, findings)
                SELECT organization_id, id, created_at, 1, 0, 3 FROM scans WHERE id = '\(withBatches)'
                """)
            for scan in [withBatches, withNothing] {
                await h.standIn.cluster.completeJob(
                    namespace: DispatcherHarness.namespace, name: RunnerAssignment.jobName(scanID: scan, attempt: 1))
            }
            let report = try await Self.sweeper(h, .init(reportGrace: 0, retryBackoff: (0, 0))).pass()
            #expect(report.completed == 1 && report.retried == 1, "\(report)")
            #expect(try await h.status(withBatches).0 == .completed)
            let reasons = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query(
                    "SELECT reason FROM scan_events WHERE scan_id = \(withBatches) AND to_status = 'completed'"
                ).map { try $0.decode(String?.self, at: 0) }
            }
            #expect(reasons == ["runner_report_missing"])
            #expect(try await h.status(withNothing) == (.retrying, 1))
            #expect(
                !(await h.jobNames()).contains(RunnerAssignment.jobName(scanID: withNothing, attempt: 1)),
                "the failed attempt's Job is deleted")
            let retries = try await Self.retries(h, withNothing)
            try #require(retries.count == 1)
            #expect(retries[0].attempt == 2)
            // The relay publishes it; the dispatcher starts attempt 2 under its own name.
            try await Self.relay(h, retries[0].payload)
            try await h.eventually("attempt 2 dispatched with its Job") { try await h.dispatchedWithJob(withNothing) }
            #expect(try await h.status(withNothing) == (.dispatched, 2))
            #expect((await h.jobNames()).contains(RunnerAssignment.jobName(scanID: withNothing, attempt: 2)))
        }
    }

    @Test(
        "a vanished Job, then stale heartbeats: retried with a doubling backoff until the attempts run out, then failed"
    )
    func retriesUntilExhausted() async throws {
        try await DispatcherHarness.run { h in
            let scan = try await Self.dispatched(h)
            let configuration = Sweeper.Configuration(
                heartbeatTimeout: 120, vanishedGrace: 60, retryBackoff: (30, 600))
            let sweeper = Self.sweeper(h, configuration)
            // The Job vanishes (deleted behind cloudscan's back) while the scan is dispatched.
            let kube = KubernetesClient(
                configuration: .init(
                    server: h.standIn.server, namespace: DispatcherHarness.namespace,
                    token: KubernetesStandIn.adminToken))
            try await kube.deleteJob(RunnerAssignment.jobName(scanID: scan, attempt: 1), propagation: .background)
            var report = try await sweeper.pass()
            #expect(report.retried == 0, "within the grace the dispatcher may still be creating it")
            try await Self.sql(h, "UPDATE scans SET dispatched_at = now() - interval '2 minutes' WHERE id = '\(scan)'")
            report = try await sweeper.pass()
            #expect(report.retried == 1)
            #expect(try await h.status(scan) == (.retrying, 1))
            // Attempt 2: started, then its heartbeats go stale.
            try await Self.relay(h, try await Self.retries(h, scan)[0].payload)
            try await h.eventually("attempt 2 dispatched") { try await h.dispatchedWithJob(scan) }
            try await Self.running(h, scan, heartbeatAgo: 600)
            report = try await sweeper.pass()
            #expect(report.retried == 1)
            #expect(try await h.status(scan) == (.retrying, 2))
            // Attempt 3 (the last of 3): stale again → failed, its Job deleted.
            try await Self.relay(h, try await Self.retries(h, scan)[1].payload)
            try await h.eventually("attempt 3 dispatched") { try await h.dispatchedWithJob(scan) }
            #expect(try await h.status(scan) == (.dispatched, 3))
            try await Self.running(h, scan, heartbeatAgo: 600)
            report = try await sweeper.pass()
            #expect(report.failed == 1)
            #expect(try await h.status(scan) == (.failed, 3))
            let (reason, message) = try await Self.failure(h, scan)
            #expect(reason == "timed_out")
            #expect(message?.contains("attempt 3 of 3, none left") == true, "\(message ?? "-")")
            let due = try await Self.retries(h, scan).map(\.due)
            #expect(due.count == 2)
            #expect(abs(due[0] - 30) < 1 && abs(due[1] - 60) < 1, "backoff 30 s, then 60 s: \(due)")
            let names = await h.jobNames()
            for attempt in 1...3 {
                #expect(!names.contains(RunnerAssignment.jobName(scanID: scan, attempt: attempt)), "\(names)")
            }
            let events = try await h.events(scan)
            #expect(events.filter { $0 == "retrying" }.count == 2 && events.last == "failed", "\(events)")
        }
    }

    @Test(
        "the local process backend, reconciled the same way: a runner exiting 3 fails its scan; one exiting 0 without results is retried"
    )
    func localRunners() async throws {
        try await DispatcherHarness.run { h in
            let crashing = try await Self.dispatched(h)
            let silent = try await Self.dispatched(h)
            try await Self.running(h, silent)
            func backend(_ script: String) -> LocalProcessBackend {
                LocalProcessBackend(
                    configuration: .init(command: ["/bin/sh", "-c", script]), logger: TestDatabase.logger("local"))
            }
            func assignment(_ scan: UUID) -> RunnerAssignment {
                RunnerAssignment(
                    scanID: scan, organizationID: h.organization, attempt: 1, scanTypes: [.sast],
                    artifactURL: "file:///nowhere", timeoutSeconds: 600, runnerToken: "t")
            }
            let failing = backend("exit 3")
            let quiet = backend("exit 0")
            try await failing.start(assignment(crashing))
            try await quiet.start(assignment(silent))
            for local in [failing, quiet] {
                try await h.eventually("the runner ended") {
                    try await local.runners().allSatisfy { $0.state != .active }
                }
            }
            let configuration = Sweeper.Configuration(reportGrace: 0, retryBackoff: (0, 0))
            func sweeper(_ inventory: LocalProcessBackend) -> Sweeper {
                Sweeper(
                    client: h.app, inventory: inventory, configuration: configuration, logger: TestDatabase.logger("s"))
            }
            // Each sweeper sees only its backend's runners; the other scan has none there yet, and
            // is within its vanished grace.
            var report = try await sweeper(failing).pass()
            #expect(report.failed == 1 && report.runners == 1, "\(report)")
            let (reason, message) = try await Self.failure(h, crashing)
            #expect(reason == "RunnerFailed" && message == "runner exited 3", "\(reason ?? "-"): \(message ?? "-")")
            report = try await sweeper(quiet).pass()
            #expect(report.retried == 1, "\(report)")
            #expect(try await h.status(silent) == (.retrying, 1))
            #expect(try await quiet.runners().isEmpty, "the failed attempt's runner record is removed")
            #expect(try await Self.retries(h, silent).map(\.attempt) == [2])
        }
    }

    @Test("Jobs of finished scans go after their retention; a superseded attempt's and an orphan's at once")
    func jobRetention() async throws {
        try await DispatcherHarness.run { h in
            let old = try await Self.dispatched(h)
            let recent = try await Self.dispatched(h)
            let superseded = try await Self.dispatched(h)
            for scan in [old, recent] {
                await h.standIn.cluster.completeJob(
                    namespace: DispatcherHarness.namespace, name: RunnerAssignment.jobName(scanID: scan, attempt: 1))
            }
            try await Self.sql(
                h,
                """
                UPDATE scans SET status = 'completed', finished_at = now() - interval '2 hours' WHERE id = '\(old)';
                UPDATE scans SET status = 'completed', finished_at = now() WHERE id = '\(recent)';
                UPDATE scans SET attempt = 2 WHERE id = '\(superseded)';
                """)
            // A Job with cloudscan's labels whose scan does not exist (deleted by retention).
            let kube = KubernetesClient(
                configuration: .init(
                    server: h.standIn.server, namespace: DispatcherHarness.namespace,
                    token: KubernetesStandIn.adminToken))
            let orphan = RunnerAssignment(
                scanID: UUID(), organizationID: h.organization, attempt: 1, scanTypes: [.sast],
                artifactURL: "https://storage.local/x.tgz", artifactSHA256: nil, timeoutSeconds: 600, runnerToken: "t")
            _ = try await kube.createJob(
                JobSpecBuilder(configuration: .init(namespace: DispatcherHarness.namespace)).job(orphan))
            let report = try await Self.sweeper(h, .init(runnerRetention: 3600)).pass()
            #expect(report.removed == 3, "\(report)")
            let names = await h.jobNames()
            #expect(!names.contains(RunnerAssignment.jobName(scanID: old, attempt: 1)))
            #expect(names.contains(RunnerAssignment.jobName(scanID: recent, attempt: 1)), "kept for its retention")
            #expect(!names.contains(RunnerAssignment.jobName(scanID: superseded, attempt: 1)))
            #expect(!names.contains(orphan.jobName))
        }
    }
}

/// Two `cloudscan sweeper` processes: one leads; SIGKILL it and the other takes over.
@Suite("Sweeper leadership (processes)")
struct SweeperLeadershipTests {
    static let binary = TestDatabase.repositoryRoot.appendingPathComponent(".build/debug/cloudscan").path

    static func log(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    @Test("the leader is SIGKILLed: the other instance leads within a few intervals (1 s each) and reconciles")
    func failover() async throws {
        try await DispatcherHarness.run { h in
            let schema = try await h.app.query("SELECT current_schema()").single().decode(String.self, at: 0)
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sweep-\(UUID())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let kubeconfig = directory.appendingPathComponent("kubeconfig").path
            try """
            apiVersion: v1
            kind: Config
            clusters: [{name: standin, cluster: {server: "\(h.standIn.server)"}}]
            users: [{name: admin, user: {token: "\(KubernetesStandIn.adminToken)"}}]
            contexts: [{name: standin, context: {cluster: standin, user: admin, namespace: \(DispatcherHarness.namespace)}}]
            current-context: standin
            """.write(toFile: kubeconfig, atomically: true, encoding: .utf8)
            let environment = [
                "DATABASE_URL":
                    "postgresql://\(TestDatabase.appUser):\(TestDatabase.appPassword)@\(TestDatabase.host):\(TestDatabase.port)/\(TestDatabase.database)",
                "DB_SCHEMA": schema, "KUBECONFIG": kubeconfig,
                "AMQP_URL":
                    "amqp://\(TestBroker.user):\(TestBroker.password)@\(TestBroker.host):\(TestBroker.port)/cloudscan",
                "SWEEPER_INTERVAL_SECONDS": "1", "SWEEPER_VANISHED_GRACE_SECONDS": "0", "RETRY_BACKOFF_SECONDS": "0",
                "METRICS_PORT": "0", "LOG_LEVEL": "notice",
            ]
            let logA = directory.appendingPathComponent("a.log").path
            let logB = directory.appendingPathComponent("b.log").path
            let a = try BackgroundCommand([Self.binary, "sweeper"], environment: environment, logFile: logA)
            try await h.eventually("the first instance leads", seconds: 20) { Self.log(logA).contains("leading (") }
            let b = try BackgroundCommand([Self.binary, "sweeper"], environment: environment, logFile: logB)
            try await Task.sleep(for: .seconds(3))
            #expect(!Self.log(logB).contains("leading ("), "one leader at a time: \(Self.log(logB))")
            _ = await a.stop(SIGKILL)
            let killed = ContinuousClock.now
            try await h.eventually("the second instance leads", seconds: 10) { Self.log(logB).contains("leading (") }
            let takeover = ContinuousClock.now - killed
            // The follower tries every interval (1 s); a few intervals allow for a busy machine.
            #expect(takeover < .seconds(5), "within a few intervals: \(takeover)")
            // It reconciles: a scan whose Job vanished is retried.
            let scan = try await SweeperLiveTests.dispatched(h)
            let kube = KubernetesClient(
                configuration: .init(
                    server: h.standIn.server, namespace: DispatcherHarness.namespace,
                    token: KubernetesStandIn.adminToken))
            try await kube.deleteJob(RunnerAssignment.jobName(scanID: scan, attempt: 1), propagation: .background)
            try await h.eventually("the new leader retried the scan whose Job vanished", seconds: 15) {
                try await h.status(scan).0 == .retrying
            }
            #expect(await b.stop(SIGTERM) == 0, "\(Self.log(logB).suffix(2000))")
        }
    }
}
