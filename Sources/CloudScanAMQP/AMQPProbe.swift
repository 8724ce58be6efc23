internal import CRabbitMQ
import Foundation

/// Opens a connection (TLS when configured), logs in and closes it: the broker readiness check.
public enum AMQPProbe {
    /// The server's properties (`product`, `version`, …), after a successful login.
    public static func serverProperties(_ configuration: AMQPConfiguration) async throws -> [String: String] {
        try await withCheckedThrowingContinuation { continuation in
            // A blocking rabbitmq-c exchange: keep it off the cooperative pool.
            Thread.detachNewThread {
                continuation.resume(
                    with: Result {
                        let session = try AMQPSession(configuration, connectionName: "cloudscan-probe")
                        defer { session.close() }
                        return session.serverProperties
                    })
            }
        }
    }
}
