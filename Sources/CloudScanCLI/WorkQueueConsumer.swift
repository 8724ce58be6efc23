import CloudScanAMQP
import CloudScanAPI
import CloudScanCore
import CloudScanMetrics
import Logging
import ServiceLifecycle

extension AMQPConsumerService {
    /// A fleet work queue's consumer as every role runs it: prefetch twice the concurrency,
    /// dead letters to `cloudscan.dlx` under the queue's name, delays through the queue's tiers
    /// from the topology file.
    static func workQueue(
        _ queue: String, broker: AMQPConfiguration, publisher: AMQPPublisher, topology: AMQPTopology,
        concurrency: Int, connectionName: String? = nil, metrics: FleetMetrics = ProcessMetrics.shared,
        environment: [String: String] = FleetSettings.values, logger: Logger, handler: @escaping Handler
    ) throws -> AMQPConsumerService {
        let delays = topology.workQueues.first { $0.name == queue }?.retryDelaysSeconds ?? [5, 30, 300]
        var consumer = AMQPConsumer.Configuration(broker: broker, queue: queue, prefetch: concurrency * 2)
        if let connectionName { consumer.connectionName = connectionName }
        return AMQPConsumerService(
            consumer: AMQPConsumer(configuration: consumer, logger: logger),
            configuration: .init(
                concurrency: concurrency, drainTimeout: try drainTimeout(environment),
                deadLetter: .init(publisher: publisher, exchange: Exchanges.deadLetter, routingKey: queue),
                delay: .init(publisher: publisher, queue: queue, delaysSeconds: delays),
                metrics: metrics.queue(queue)),
            logger: logger, handler: handler)
    }
}

/// The process's metrics: one registry, served on `/metrics` by every role (`cloudscan dev`
/// serves all of its roles' on the API port).
enum ProcessMetrics {
    static let shared: FleetMetrics = {
        let metrics = FleetMetrics()
        metrics.bootstrap()
        return metrics
    }()
}

/// `/metrics` and `/healthz` of a role without an API, on METRICS_HOST (default 127.0.0.1; 0.0.0.0
/// in a pod) : METRICS_PORT (the role's default).
func metricsEndpoint(defaultPort: Int, environment: [String: String] = FleetSettings.values, logger: Logger) throws
    -> any Service
{
    MetricsEndpoint.service(
        metrics: ProcessMetrics.shared, host: environment["METRICS_HOST"] ?? "127.0.0.1",
        port: try FleetSettings.integer("METRICS_PORT", defaultPort, in: 0...65535, from: environment), logger: logger)
}

/// How long a consumer role finishes in-flight work after SIGTERM (DRAIN_TIMEOUT_SECONDS, default
/// 20): keep it below the orchestrator's grace period (Kubernetes: terminationGracePeriodSeconds,
/// 30 by default), so the process exits on its own, having settled what it finished.
func drainTimeout(_ environment: [String: String] = FleetSettings.values) throws -> Duration {
    .seconds(try FleetSettings.integer("DRAIN_TIMEOUT_SECONDS", 20, in: 1...3600, from: environment))
}
