import Foundation
import Logging
import Synchronization

/// LISTEN on channels over a dedicated session with its own thread.
///
/// If the session drops, the listener reconnects with backoff, LISTENs again and yields
/// ``Event/reconnected``: notifications sent meanwhile are lost, so consumers re-scan then.
public final class PostgresListener: Sendable {
    /// What the stream yields.
    public enum Event: Sendable, Hashable {
        /// A NOTIFY on one of the channels.
        case notification(PostgresNotification)
        /// LISTEN is in place (first time, or again after a reconnect).
        case listening
        /// The session was lost and re-established; notifications may have been missed.
        case reconnected
    }

    private let configuration: PostgresConfiguration
    private let logger: Logger

    /// A listener; nothing connects until ``events(channels:)`` is iterated.
    public init(configuration: PostgresConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Events for `channels`. Ends (cleanly) when the consumer stops iterating.
    public func events(channels: [String]) -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(10_000))
        let stopped = Arc(Atomic<Bool>(false))
        continuation.onTermination = { _ in stopped.value.store(true, ordering: .relaxed) }
        let configuration = configuration
        let logger = logger
        let thread = Thread {
            Self.loop(
                configuration: configuration, channels: channels, logger: logger, stopped: stopped,
                continuation: continuation)
        }
        thread.name = "cloudscan.postgres.listener"
        thread.start()
        return stream
    }

    private static func loop(
        configuration: PostgresConfiguration, channels: [String], logger: Logger, stopped: Arc<Atomic<Bool>>,
        continuation: AsyncStream<Event>.Continuation
    ) {
        var backoff: UInt32 = 100_000
        var everListened = false
        while !stopped.value.load(ordering: .relaxed) {
            do {
                let connection = try LibPQConnection.connect(configuration)
                defer { connection.close() }
                for channel in channels {
                    _ = try connection.executeScript("LISTEN \(try connection.escapeIdentifier(channel))")
                }
                continuation.yield(everListened ? .reconnected : .listening)
                everListened = true
                backoff = 100_000
                while !stopped.value.load(ordering: .relaxed) {
                    for notification in try connection.waitForNotifications(timeoutMilliseconds: 200) {
                        continuation.yield(.notification(notification))
                    }
                }
            } catch {
                if stopped.value.load(ordering: .relaxed) { break }
                logger.warning("PostgreSQL listener lost its session; reconnecting", metadata: ["error": "\(error)"])
                usleep(backoff)
                backoff = min(backoff * 2, 5_000_000)
            }
        }
        continuation.finish()
    }
}

/// A reference to a non-copyable value shared between threads.
final class Arc<Value: ~Copyable & Sendable>: Sendable {
    let value: Value
    init(_ value: consuming Value) { self.value = value }
}
