import ArgumentParser
import CloudScanAMQP
import CloudScanAPI
import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanMetrics
import CloudScanPostgres
import Foundation
import Logging
import ServiceLifecycle

/// The sweeper's settings from the environment (`cloudscan sweeper` and `cloudscan dev`).
enum SweeperSettings {
    /// SWEEPER_INTERVAL_SECONDS (30), SWEEPER_START_TIMEOUT_SECONDS (600),
    /// SWEEPER_HEARTBEAT_TIMEOUT_SECONDS (120), SWEEPER_REPORT_GRACE_SECONDS (60),
    /// SWEEPER_VANISHED_GRACE_SECONDS (60), JOB_RETENTION_SECONDS (3600), RETRY_BACKOFF_SECONDS (30),
    /// RETRY_BACKOFF_MAX_SECONDS (600), MAX_ATTEMPTS (`sast=3,sca=2`; 3 for a type not named).
    static func configuration(_ environment: [String: String]) throws -> Sweeper.Configuration {
        func seconds(_ name: String, _ fallback: Double) throws -> Double {
            guard let text = environment[name], !text.isEmpty else { return fallback }
            guard let value = Double(text), value >= 0 else { throw ValidationError("\(name): seconds ≥ 0") }
            return value
        }
        var configuration = Sweeper.Configuration(
            interval: .milliseconds(Int(try seconds("SWEEPER_INTERVAL_SECONDS", 30) * 1000)),
            startTimeout: try seconds("SWEEPER_START_TIMEOUT_SECONDS", 600),
            heartbeatTimeout: try seconds("SWEEPER_HEARTBEAT_TIMEOUT_SECONDS", 120),
            reportGrace: try seconds("SWEEPER_REPORT_GRACE_SECONDS", 60),
            vanishedGrace: try seconds("SWEEPER_VANISHED_GRACE_SECONDS", 60),
            runnerRetention: try seconds("JOB_RETENTION_SECONDS", 3600),
            retryBackoff: (try seconds("RETRY_BACKOFF_SECONDS", 30), try seconds("RETRY_BACKOFF_MAX_SECONDS", 600)))
        if let text = environment["MAX_ATTEMPTS"], !text.isEmpty {
            for pair in text.split(separator: ",") {
                let parts = pair.split(separator: "=").map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, let type = ScanType(rawValue: parts[0]), let count = Int(parts[1]), count >= 1
                else { throw ValidationError("MAX_ATTEMPTS: \(pair) is not <scan type>=<attempts ≥ 1>") }
                configuration.maximumAttempts[type] = count
            }
        }
        return configuration
    }

    static func onPass(_ metrics: FleetMetrics) -> @Sendable (Sweeper.PassReport) -> Void {
        { report in
            metrics.jobsActive(report.activeRunners)
            metrics.sweeperPass(
                seconds: report.seconds, retried: report.retried, failed: report.failed, completed: report.completed,
                removed: report.removed)
        }
    }
}

/// Samples `cloudscan_queue_depth` for the topology's work and dead-letter queues every interval.
struct QueueDepthSampler: Service {
    let topology: AMQPTopology
    let broker: AMQPConfiguration
    let metrics: FleetMetrics
    let interval: Duration
    let logger: Logger

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    for (queue, depth) in try await topology.depths(broker: broker) {
                        metrics.queueDepth(queue).set(Double(depth))
                    }
                } catch {
                    logger.info("queue depths not sampled", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}

/// `cloudscan sweeper`: reconciles Kubernetes Jobs with scans (one leader at a time).
struct SweeperCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweeper",
        abstract: "Reconcile runners' Jobs with scans: finished, failed, vanished, timed out; retries; Job cleanup.",
        discussion: """
            One instance leads (a PostgreSQL advisory lock); run two for failover. Kubernetes settings as for \
            the dispatcher (KUBECONFIG or KUBE_IN_CLUSTER, KUBE_NAMESPACE). Environment: \
            SWEEPER_INTERVAL_SECONDS (30), SWEEPER_START_TIMEOUT_SECONDS (600), \
            SWEEPER_HEARTBEAT_TIMEOUT_SECONDS (120), SWEEPER_REPORT_GRACE_SECONDS (60), \
            SWEEPER_VANISHED_GRACE_SECONDS (60), JOB_RETENTION_SECONDS (3600), RETRY_BACKOFF_SECONDS (30), \
            RETRY_BACKOFF_MAX_SECONDS (600), MAX_ATTEMPTS (sast=3,sca=2), METRICS_PORT (9102: /metrics, /healthz). \
            The local process backend's runners live in the dispatcher's process: `cloudscan dev` sweeps them.
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var broker: BrokerOptions
    @Option(help: "The topology file, for the queue depths (env TOPOLOGY_FILE).") var topology: String?
    @Option(help: "Port of /metrics and /healthz (env METRICS_PORT; default 9102).") var metricsPort: Int?

    func run() async throws {
        let environment = FleetSettings.values
        let logger = try database.makeLogger(label: "cloudscan.sweeper")
        var databaseConfiguration = try database.postgresConfiguration(applicationName: "cloudscan-sweeper")
        databaseConfiguration.maximumConnections = max(databaseConfiguration.maximumConnections, 20)
        let client = PostgresClient(configuration: databaseConfiguration, logger: logger)
        let kubernetes = try KubernetesConfiguration.fromEnvironment(environment)
        let backend = KubernetesJobBackend(
            client: KubernetesClient(configuration: kubernetes),
            builder: JobSpecBuilder(
                configuration: try DispatcherParts.jobConfiguration(namespace: kubernetes.namespace, environment)),
            logger: logger)
        let metrics = ProcessMetrics.shared
        let settings = try SweeperSettings.configuration(environment)
        let sweeper = Sweeper(
            client: client, inventory: backend, configuration: settings, logger: logger,
            onPass: SweeperSettings.onPass(metrics))
        let topologyFile = try locateRepositoryFile(
            "topology/topology.json", flag: topology ?? environment["TOPOLOGY_FILE"])
        let port = try metricsPort ?? FleetSettings.integer("METRICS_PORT", 9102, in: 0...65535, from: environment)
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    sweeper,
                    QueueDepthSampler(
                        topology: try AMQPTopology.load(from: topologyFile), broker: try broker.configuration(),
                        metrics: metrics, interval: settings.interval, logger: logger),
                    MetricsEndpoint.service(
                        metrics: metrics, host: environment["METRICS_HOST"] ?? "127.0.0.1", port: port, logger: logger),
                ], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        logger.notice("sweeper running", metadata: ["namespace": "\(kubernetes.namespace)", "metrics_port": "\(port)"])
        try await group.run()
        await client.shutdown()
    }
}
