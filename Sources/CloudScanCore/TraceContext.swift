import Foundation
import Synchronization

/// A W3C Trace Context (`traceparent`: `00-<trace id, 32 hex>-<parent id, 16 hex>-<flags, 2 hex>`).
///
/// It travels API → outbox → AMQP headers → consumers → the runner's environment → the runner's
/// findings and status messages → the events they cause → webhooks. Each hop keeps the trace id
/// and names itself with a new span id (``child()``); logs carry both (`trace_id`, `span_id`).
public struct TraceContext: Sendable, Hashable {
    public var traceID: String
    public var spanID: String
    public var flags: String

    /// Parses a `traceparent` header; nil for anything that is not a valid one (W3C: version ff,
    /// all-zero ids and wrong lengths are invalid; an unknown later version is read as 00).
    public init?(traceparent: String) {
        let parts = traceparent.trimmingCharacters(in: .whitespaces).lowercased().split(
            separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0].count == 2, parts[0] != "ff", parts[1].count == 32, parts[2].count == 16,
            parts[3].count == 2, parts.prefix(4).allSatisfy({ ASCII.isLowercaseHex($0) }),
            parts[0] != "00" || parts.count == 4,
            parts[1] != String(repeating: "0", count: 32), parts[2] != String(repeating: "0", count: 16)
        else { return nil }
        traceID = String(parts[1])
        spanID = String(parts[2])
        flags = String(parts[3])
    }

    public init(traceID: String, spanID: String, flags: String = "01") {
        self.traceID = traceID
        self.spanID = spanID
        self.flags = flags
    }

    /// A new trace (sampled), for a request that came without one.
    public static func root() -> TraceContext {
        TraceContext(traceID: randomHex(bytes: 16), spanID: randomHex(bytes: 8))
    }

    /// The same trace, a new span: what this hop hands on.
    public func child() -> TraceContext {
        TraceContext(traceID: traceID, spanID: Self.randomHex(bytes: 8), flags: flags)
    }

    public var traceparent: String { "00-\(traceID)-\(spanID)-\(flags)" }

    static func randomHex(bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        var text = ""
        repeat {
            text = (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }
                .joined()
        } while text.allSatisfy { $0 == "0" }
        return text
    }

    /// The trace of the work this task does (set by the API per request, by consumers per message).
    @TaskLocal public static var current: TraceContext?
}

/// Fields every log line of the current task carries (JSON logs): `scan_id`, `organization_id`,
/// `message_id`, `queue`, … — set by consumers per message and by the API per request.
public enum LogContext {
    @TaskLocal public static var current: [String: String] = [:]

    /// Fields learned partway through a request (the caller's organization, once authenticated):
    /// a request's box is installed when it starts, and filled in by whoever learns them.
    public final class Late: Sendable {
        let fields = Mutex<[String: String]>([:])
        public init() {}
        public func set(_ key: String, _ value: String) { fields.withLock { $0[key] = value } }
        public var values: [String: String] { fields.withLock { $0 } }
    }

    @TaskLocal public static var late: Late?

    /// Adds a field to the current request's log lines from here on.
    public static func learn(_ key: String, _ value: String) { late?.set(key, value) }

    /// Runs `body` with `fields` added to the current ones, and with `trace` as the current trace.
    public static func with<R>(
        _ fields: [String: String], trace: TraceContext?, _ body: () async throws -> R
    ) async rethrows -> R {
        var merged = current
        merged.merge(fields) { _, new in new }
        return try await $current.withValue(merged) {
            try await TraceContext.$current.withValue(trace ?? TraceContext.current) { try await body() }
        }
    }
}
