import CloudScanMetrics
import Hummingbird
import Logging
import ServiceLifecycle

/// `/metrics` and `/healthz` for a role without an API (sweeper, cleaner, notifier), on its own
/// port (env METRICS_PORT), so Prometheus scrapes every process of the fleet.
public enum MetricsEndpoint {
    public static func service(metrics: FleetMetrics, host: String, port: Int, logger: Logger) -> any Service {
        let router = Router()
        router.get("/healthz") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"status":"ok"}"#)))
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }
        return Application(
            router: router, configuration: ApplicationConfiguration(address: .hostname(host, port: port)),
            logger: logger)
    }
}
