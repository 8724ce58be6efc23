import ArgumentParser
import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanPostgres
import CloudScanService
import CloudScanWorkers
import Foundation
import KubernetesStandIn
import Logging
import ServiceLifecycle
import Synchronization

/// `cloudscan-bench dispatch`: the Swift side of scripts/bench-dispatch. Creates scans at a fixed
/// rate through the service layer (the API's path: scan + event + outbox committed), with the
/// outbox relay and the dispatcher running as in production (Kubernetes backend, against the
/// stand-in), and measures each scan from its commit to the stand-in receiving its Job POST.
struct DispatchBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dispatch", abstract: "Dispatch latency: scan committed → Job POST received.")

    @Option(name: .customLong("database-url")) var databaseURL: String
    @Option var schema: String
    @Option(name: .customLong("amqp-url")) var amqpURL: String
    @Option var topology: String
    @Option var organization: String
    @Option var rate: Int = 100
    @Option var seconds: Int = 60
    @Option var concurrency: Int = 8

    func run() async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        var database = PostgresConfiguration(environment: [:], applicationName: "bench-dispatch")
        database.connectionString = databaseURL
        database.searchPath = schema
        database.maximumConnections = 24
        let client = PostgresClient(configuration: database, logger: logger)
        let broker = try AMQPConfiguration(url: amqpURL)
        let loadedTopology = try AMQPTopology.load(from: URL(fileURLWithPath: topology))
        guard try await loadedTopology.apply(broker: broker).isClean else { throw ValidationError("topology drift") }
        let standIn = try await KubernetesStandIn.start()
        let publisher = AMQPPublisher(configuration: .init(broker: broker, connectionName: "bench"), logger: logger)
        let relayPublisher = AMQPPublisher(
            configuration: .init(broker: broker, connectionName: "bench-relay"), logger: logger)
        let relay = OutboxRelay(
            client: client, listener: PostgresListener(configuration: database, logger: logger),
            publisher: relayPublisher,
            configuration: .init(), logger: logger)
        let kube = KubernetesClient(
            configuration: .init(server: standIn.server, namespace: "cloudscan", token: KubernetesStandIn.adminToken))
        let dispatcher = Dispatcher(
            client: client,
            backend: KubernetesJobBackend(
                client: kube, builder: JobSpecBuilder(configuration: .init(namespace: "cloudscan")), logger: logger),
            artifacts: ArtifactResolver(), tokens: try RunnerTokenMinter(secret: String(repeating: "b", count: 40)),
            logger: logger)
        func consumer(_ queue: String, _ handler: @escaping AMQPConsumerService.Handler) -> AMQPConsumerService {
            AMQPConsumerService(
                consumer: AMQPConsumer(
                    configuration: .init(broker: broker, queue: queue, prefetch: concurrency * 2), logger: logger),
                configuration: .init(
                    concurrency: concurrency,
                    deadLetter: .init(publisher: publisher, exchange: Exchanges.deadLetter, routingKey: queue),
                    delay: .init(publisher: publisher, queue: queue, delaysSeconds: [5, 30, 300])),
                logger: logger, handler: handler)
        }
        let group = ServiceGroup(
            configuration: .init(
                services: [relay, consumer("cloudscan.dispatch", dispatcher.handleDispatch)],
                gracefulShutdownSignals: [], logger: logger))
        let service = ScanService(client: client, logger: logger)
        guard let org = UUID(uuidString: organization) else { throw ValidationError("organization is not a UUID") }

        final class Ledger: Sendable {
            let committed = Mutex<[String: ContinuousClock.Instant]>([:])
            let failures = Atomic<Int>(0)
        }
        let ledger = Ledger()
        let rate = self.rate
        let total = rate * seconds
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await Task.sleep(for: .seconds(1))
            let start = ContinuousClock.now
            await withTaskGroup(of: Void.self) { creates in
                for n in 0..<total {
                    try? await Task.sleep(until: start + .microseconds(n * 1_000_000 / rate))
                    creates.addTask {
                        do {
                            let created = try await service.createScan(
                                organizationID: org,
                                request: CreateScanRequest(
                                    project: .init(externalKey: "proj-bench"), scanTypes: ["sast"],
                                    artifactURL: "https://storage.local/bench.tar.gz"))
                            let at = ContinuousClock.now
                            let name = RunnerAssignment.jobName(scanID: created.scan.id, attempt: 1)
                            ledger.committed.withLock { $0[name] = at }
                        } catch {
                            ledger.failures.add(1, ordering: .relaxed)
                        }
                    }
                }
            }
            let offered = ContinuousClock.now - start
            // Wait for the stragglers (at most 30 s).
            let deadline = ContinuousClock.now + .seconds(30)
            while await standIn.cluster.jobNames(namespace: "cloudscan").count < total
                - ledger.failures.load(ordering: .relaxed),
                ContinuousClock.now < deadline
            {
                try await Task.sleep(for: .milliseconds(100))
            }
            let creates = await standIn.cluster.jobCreates
            var firstPost: [String: ContinuousClock.Instant] = [:]
            for create in creates where firstPost[create.name] == nil { firstPost[create.name] = create.at }
            let commits = ledger.committed.withLock { $0 }
            var latencies: [Double] = []
            var buckets: [Int: Double] = [:]  // the worst latency of the scans committed in each 5 s
            for (name, at) in commits {
                if let posted = firstPost[name] {
                    let d = posted - at
                    let ms = Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
                    latencies.append(ms)
                    let bucket = Int((at - start).components.seconds) / 5
                    buckets[bucket] = max(buckets[bucket] ?? 0, ms)
                }
            }
            print(
                "TIMELINE worst ms per 5 s: "
                    + buckets.keys.sorted().map { String(format: "%.0f", buckets[$0]!) }.joined(separator: " "))
            latencies.sort()
            func p(_ q: Double) -> Double {
                latencies.isEmpty ? .nan : latencies[min(latencies.count - 1, Int(Double(latencies.count) * q))]
            }
            let offeredSeconds = Double(offered.components.seconds) + Double(offered.components.attoseconds) / 1e18
            print(
                String(
                    format:
                        "RESULT scans=%d dispatched=%d failed_creates=%d offered_rate=%.1f/s p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f max_ms=%.1f",
                    total, latencies.count, ledger.failures.load(ordering: .relaxed), Double(total) / offeredSeconds,
                    p(0.5),
                    p(0.9), p(0.99), latencies.last ?? .nan))
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        await publisher.close()
        await relayPublisher.close()
        await client.shutdown()
        await standIn.stop()
    }
}
