import CloudScanCore
import Foundation
import Logging
import Synchronization

/// The fleet's logs: one JSON object a line on stderr (`LOG_FORMAT=json`, the default of every
/// role but `cloudscan dev`) or swift-log's text lines (`LOG_FORMAT=text`). Either way each line
/// carries the task's ``LogContext`` (scan_id, organization_id, message_id, queue, …) and its
/// ``TraceContext`` as `trace_id` / `span_id`.
public enum FleetLogging {
    public enum Format: String, Sendable { case json, text }

    private static let bootstrapped = Mutex(false)

    /// Once per process; later calls change nothing.
    public static func bootstrap(format: Format) {
        let first = bootstrapped.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        let provider = metadataProvider
        switch format {
        case .json:
            LoggingSystem.bootstrap(
                { label, provider in JSONLogHandler(label: label, metadataProvider: provider) },
                metadataProvider: provider)
        case .text:
            LoggingSystem.bootstrap(
                { label, provider in StreamLogHandler.standardError(label: label, metadataProvider: provider) },
                metadataProvider: provider)
        }
    }

    /// The task's log context and trace, as metadata.
    public static let metadataProvider = Logger.MetadataProvider {
        var metadata: Logger.Metadata = [:]
        if let late = LogContext.late { for (key, value) in late.values { metadata[key] = .string(value) } }
        for (key, value) in LogContext.current { metadata[key] = .string(value) }
        if let trace = TraceContext.current {
            metadata["trace_id"] = .string(trace.traceID)
            metadata["span_id"] = .string(trace.spanID)
        }
        return metadata
    }
}

/// One JSON object a line: `ts` (RFC 3339, UTC, ms), `level`, `logger`, `msg`, then the metadata
/// (provider's, logger's, the call's; later wins) as top-level fields, `source` last.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let write: @Sendable (String) -> Void

    public init(
        label: String, metadataProvider: Logger.MetadataProvider? = nil,
        write: @escaping @Sendable (String) -> Void = JSONLogHandler.standardError
    ) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(
        level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String,
        file: String, function: String, line: UInt
    ) {
        var fields = metadataProvider?.get() ?? [:]
        fields.merge(metadata) { _, new in new }
        if let explicit { fields.merge(explicit) { _, new in new } }
        var text = "{\"ts\":\"\(RFC3339.string(from: Date(), fractionDigits: 3))\",\"level\":\"\(level.rawValue)\""
        text += ",\"logger\":" + Self.quoted(label) + ",\"msg\":" + Self.quoted(message.description)
        for key in fields.keys.sorted() where !["ts", "level", "logger", "msg"].contains(key) {
            text += "," + Self.quoted(key) + ":" + Self.value(fields[key]!)
        }
        text += ",\"source\":" + Self.quoted(source) + "}\n"
        write(text)
    }

    static func value(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return quoted(text)
        case .stringConvertible(let convertible): return quoted(convertible.description)
        case .array(let values): return "[" + values.map(Self.value).joined(separator: ",") + "]"
        case .dictionary(let values):
            return "{" + values.keys.sorted().map { quoted($0) + ":" + Self.value(values[$0]!) }.joined(separator: ",")
                + "}"
        }
    }

    /// A JSON string (RFC 8259 escapes; other control characters as \u00XX).
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// Whole lines to stderr (one write each, so lines of concurrent tasks do not interleave).
    public static let standardError: @Sendable (String) -> Void = { line in
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Foundation.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                if written <= 0 { break }
                offset += written
            }
        }
    }
}
