import CoreMetrics
import Foundation
import Prometheus

/// The fleet's Prometheus metrics, one registry per process, exposed on `/metrics`.
///
/// The names are the contract (DESIGN.md): `cloudscan_scans_total`,
/// `cloudscan_scan_duration_seconds`, `cloudscan_queue_depth`, `cloudscan_findings_total`,
/// `cloudscan_k8s_jobs_active`, plus per-role ones. Code that only knows swift-metrics (`Counter`,
/// `Timer`, …) reaches the same registry through ``bootstrap()``.
public final class FleetMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        // Registered up front, so a scrape shows every contract name even before its first event.
        _ = scanDuration
        _ = registry.makeGauge(name: "cloudscan_k8s_jobs_active", help: "Kubernetes Jobs cloudscan is running.")
    }

    /// Routes the swift-metrics facade to this registry (once per process).
    public func bootstrap() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    /// The exposition text (format 0.0.4).
    public func render() -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(16 * 1024)
        registry.emit(into: &buffer)
        return buffer
    }

    /// Scans that entered a state, by that state (`queued` on create, `canceled`, `completed`, …).
    public func scans(_ status: String) -> Prometheus.Counter {
        registry.makeCounter(
            name: "cloudscan_scans_total", labels: [("status", status)],
            help: "Scans that entered a state, by that state.")
    }

    public var scanDuration: DurationHistogram {
        registry.makeDurationHistogram(
            name: "cloudscan_scan_duration_seconds", labels: [],
            buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200].map { .seconds($0) },
            help: "From queued to a final state.")
    }

    public func queueDepth(_ queue: String) -> Prometheus.Gauge {
        registry.makeGauge(
            name: "cloudscan_queue_depth", labels: [("queue", queue)], help: "Messages ready in a queue.")
    }

    /// Runners (Jobs or local processes) cloudscan has that have not finished.
    public func jobsActive(_ count: Int) {
        registry.makeGauge(name: "cloudscan_k8s_jobs_active", help: "Kubernetes Jobs cloudscan is running.")
            .set(Double(count))
    }

    /// One sweeper pass: how long it took and what it did.
    public func sweeperPass(seconds: Double, retried: Int, failed: Int, completed: Int, removed: Int) {
        registry.makeGauge(name: "cloudscan_sweeper_pass_seconds", help: "The last sweeper pass's duration.")
            .set(seconds)
        for (action, count) in [
            ("retried", retried), ("failed", failed), ("completed", completed), ("removed", removed),
        ]
        where count > 0 {
            registry.makeCounter(
                name: "cloudscan_sweeper_actions_total", labels: [("action", action)],
                help: "Scans the sweeper moved (retried, failed, completed) and runners it removed."
            ).increment(by: Int64(count))
        }
    }

    public func findings(_ severity: String) -> Prometheus.Counter {
        registry.makeCounter(
            name: "cloudscan_findings_total", labels: [("severity", severity)], help: "Findings stored, by severity."
        )
    }

    /// One request handled by a transport (`http` with the route pattern, `grpc` with the method).
    public func request(transport: String, route: String, code: String, duration: Duration) {
        registry.makeCounter(
            name: "cloudscan_api_requests_total", labels: [("transport", transport), ("route", route), ("code", code)],
            help: "API requests by transport, route and outcome."
        ).increment()
        registry.makeDurationHistogram(
            name: "cloudscan_api_request_duration_seconds", labels: [("transport", transport), ("route", route)],
            buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5].map {
                .nanoseconds(Int64($0 * 1e9))
            },
            help: "API request latency by transport and route."
        ).record(duration)
    }

    /// Outbox rows published with a broker confirm, and ones that must wait for the next pass.
    public func outbox(published: Int, failed: Int) {
        if published > 0 {
            registry.makeCounter(name: "cloudscan_outbox_published_total", help: "Outbox rows confirmed by the broker.")
                .increment(by: Int64(published))
        }
        if failed > 0 {
            registry.makeCounter(
                name: "cloudscan_outbox_publish_failures_total", help: "Outbox rows not confirmed (retried later)."
            ).increment(by: Int64(failed))
        }
    }

    /// Open WatchScan streams.
    public func watchers(_ count: Int) {
        registry.makeGauge(name: "cloudscan_watch_streams", help: "Open WatchScan streams.").set(Double(count))
    }

    /// A scan reached a final state this long after it was queued.
    public func scanFinished(after seconds: Double) {
        guard seconds >= 0, seconds.isFinite else { return }
        scanDuration.record(.nanoseconds(Int64(seconds * 1e9)))
    }

    /// The outbox's unsent rows and the age of the oldest due one (0 when none).
    public func outboxBacklog(pending: Int, oldestAgeSeconds: Double) {
        registry.makeGauge(name: "cloudscan_outbox_pending", help: "Outbox rows not yet confirmed by the broker.")
            .set(Double(pending))
        registry.makeGauge(
            name: "cloudscan_outbox_lag_seconds", help: "Age of the oldest outbox row not yet confirmed by the broker."
        ).set(oldestAgeSeconds)
    }

    /// One publish and how it ended (`confirmed`, `nacked`, `unroutable`, `error`), with the wait
    /// for the broker's confirm.
    public func publish(exchange: String, result: String, duration: Duration) {
        let exchange = exchange.isEmpty ? "(default)" : exchange
        registry.makeCounter(
            name: "cloudscan_publishes_total", labels: [("exchange", exchange), ("result", result)],
            help: "Confirmed publishes by exchange and result."
        ).increment()
        registry.makeDurationHistogram(
            name: "cloudscan_publish_confirm_seconds", labels: [("exchange", exchange)],
            buckets: Self.fastBuckets, help: "From publish to the broker's confirm."
        ).record(duration)
    }

    /// The metrics of one consumer queue, made once and kept by its consumer.
    public func queue(_ name: String) -> QueueMetrics { QueueMetrics(registry: registry, queue: name) }

    static let fastBuckets: [Duration] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
    ].map { .nanoseconds(Int64($0 * 1e9)) }
}

/// Per consumer queue: messages handled by outcome, failures, handler duration, in flight, and
/// (for batching consumers) batch sizes.
public final class QueueMetrics: Sendable {
    /// How a message ended: `ack`, `retry` (back to the queue), `delay` (parked in a retry tier),
    /// `dead_letter`.
    public enum Outcome: String, Sendable, CaseIterable {
        case ack, retry, delay
        case deadLetter = "dead_letter"
    }

    public let queue: String
    private let handled: [Outcome: Prometheus.Counter]
    private let failures: Prometheus.Counter
    private let duration: DurationHistogram
    private let inFlight: Prometheus.Gauge
    private let registry: PrometheusCollectorRegistry

    init(registry: PrometheusCollectorRegistry, queue: String) {
        self.queue = queue
        var handled: [Outcome: Prometheus.Counter] = [:]
        for outcome in Outcome.allCases {
            handled[outcome] = registry.makeCounter(
                name: "cloudscan_messages_handled_total", labels: [("queue", queue), ("outcome", outcome.rawValue)],
                help: "Messages a consumer settled, by queue and outcome (ack, retry, delay, dead_letter).")
        }
        self.handled = handled
        failures = registry.makeCounter(
            name: "cloudscan_messages_failed_total", labels: [("queue", queue)],
            help: "Messages whose handler failed (threw) or that were refused (dead-lettered), by queue.")
        duration = registry.makeDurationHistogram(
            name: "cloudscan_handler_duration_seconds", labels: [("queue", queue)], buckets: FleetMetrics.fastBuckets,
            help: "Time a consumer spent on a message (or a batch) until it was settled, by queue.")
        inFlight = registry.makeGauge(
            name: "cloudscan_messages_in_flight", labels: [("queue", queue)],
            help: "Messages delivered to a consumer and not yet settled, by queue.")
        self.registry = registry
    }

    public func started(_ count: Int = 1) { inFlight.increment(by: Double(count)) }

    public func settled(_ outcome: Outcome, count: Int = 1) {
        inFlight.decrement(by: Double(count))
        handled[outcome]?.increment(by: Int64(count))
        if outcome == .deadLetter { failures.increment(by: Int64(count)) }
    }

    /// The handler threw (the message goes back to the queue).
    public func failed() { failures.increment() }

    /// Redelivered without settling (shutdown, lost connection).
    public func abandoned(_ count: Int = 1) { inFlight.decrement(by: Double(count)) }

    public func handlerDuration(_ duration: Duration) { self.duration.record(duration) }

    /// One write batch (only batching consumers have these series).
    public func batch(messages: Int, rows: Int) {
        let sizes: [Double] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]
        registry.makeValueHistogram(
            name: "cloudscan_batch_messages", labels: [("queue", queue)], buckets: sizes,
            help: "Messages per write batch (findings writer flush), by queue."
        ).record(Double(messages))
        registry.makeValueHistogram(
            name: "cloudscan_batch_rows", labels: [("queue", queue)], buckets: sizes,
            help: "Rows per write batch (findings writer flush), by queue."
        ).record(Double(rows))
    }
}
