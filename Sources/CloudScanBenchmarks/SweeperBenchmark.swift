import ArgumentParser
import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanPostgres
import Foundation
import KubernetesStandIn
import Logging

/// `cloudscan-bench sweeper`: the Swift side of scripts/bench-sweeper. N active scans, each with
/// its Job in the Kubernetes stand-in; 1% of the Jobs Failed and 1% Complete without results, so
/// the first pass writes (failures, retries through the outbox, Job deletions) and the later
/// passes only reconcile. Prints each pass's time.
struct SweeperBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweeper", abstract: "One sweeper pass over N active Jobs (list + reconcile + writes).")

    @Option(name: .customLong("database-url")) var databaseURL: String
    @Option var schema: String
    @Option var organization: String
    @Option var jobs: Int = 10_000
    @Option var passes: Int = 5

    func run() async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        var database = PostgresConfiguration(environment: [:], applicationName: "bench-sweeper")
        database.connectionString = databaseURL
        database.searchPath = schema
        database.maximumConnections = 16
        let client = PostgresClient(configuration: database, logger: logger)
        guard let org = UUID(uuidString: organization) else { throw ValidationError("organization is not a UUID") }
        // The scans: half dispatched, half running with a fresh heartbeat.
        let ids = try await client.withTransaction(organizationID: org) { c in
            try await c.query(
                """
                INSERT INTO scans (id, created_at, organization_id, project_id, status, attempt, scan_types, artifact_ref,
                                   dispatched_at, started_at, heartbeat_at)
                SELECT gen_random_uuid(), now(), \(org), p.id, CASE WHEN g % 2 = 0 THEN 'running' ELSE 'dispatched' END,
                       1, '{sast}', 'file:///bench', now(), CASE WHEN g % 2 = 0 THEN now() END,
                       CASE WHEN g % 2 = 0 THEN now() END
                FROM projects p, generate_series(1, \(jobs)) g
                RETURNING id
                """
            ).map { try $0.decode(UUID.self, at: 0) }
        }
        let standIn = try await KubernetesStandIn.start()
        let kube = KubernetesClient(
            configuration: .init(server: standIn.server, namespace: "cloudscan", token: KubernetesStandIn.adminToken))
        let builder = JobSpecBuilder(configuration: .init(namespace: "cloudscan"))
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<16 {
                group.addTask {
                    for index in stride(from: lane, to: ids.count, by: 16) {
                        _ = try await kube.createJob(
                            builder.job(
                                RunnerAssignment(
                                    scanID: ids[index], organizationID: org, attempt: 1, scanTypes: [.sast],
                                    artifactURL: "file:///bench", timeoutSeconds: 1800, runnerToken: "t")))
                    }
                }
            }
            try await group.waitForAll()
        }
        // The Jobs' controller updates land a moment after each create; then one untimed list
        // fills the stand-in's encoded-item cache (an API server serves lists from its watch cache).
        try await Task.sleep(for: .seconds(1))
        _ = try await kube.listAllJobs(labelSelector: JobSpecBuilder.managedSelector)
        print("SETUP jobs=\(ids.count) created_and_listed_in=\(ContinuousClock.now - started)")
        // Time to attach a profiler (`perf record -p`), when asked.
        if let pause = ProcessInfo.processInfo.environment["BENCH_PAUSE_SECONDS"].flatMap(Double.init) {
            FileManager.default.createFile(
                atPath: ProcessInfo.processInfo.environment["BENCH_PAUSE_FILE"] ?? "/tmp/cloudscan-bench.pid",
                contents: Data("\(getpid())\n".utf8))
            try await Task.sleep(for: .seconds(pause))
        }
        let actionable = max(1, ids.count / 100)
        for index in 0..<actionable {
            await standIn.cluster.failJob(
                namespace: "cloudscan", name: RunnerAssignment.jobName(scanID: ids[2 * index], attempt: 1),
                terminationMessage: "bench")
            await standIn.cluster.completeJob(
                namespace: "cloudscan", name: RunnerAssignment.jobName(scanID: ids[2 * index + 1], attempt: 1))
        }
        let sweeper = Sweeper(
            client: client,
            inventory: KubernetesJobBackend(client: kube, builder: builder, logger: logger),
            configuration: .init(reportGrace: 0, retryBackoff: (0, 0)), logger: logger)
        for pass in 1...passes {
            let report = try await sweeper.pass()
            print(
                String(
                    format:
                        "PASS %d seconds=%.3f (list %.3f, scans %.3f) runners=%d active_scans=%d failed=%d retried=%d completed=%d removed=%d",
                    pass, report.seconds, report.listSeconds, report.scansSeconds, report.runners, report.activeScans,
                    report.failed, report.retried,
                    report.completed, report.removed))
        }
        await standIn.stop()
        await client.shutdown()
    }
}
