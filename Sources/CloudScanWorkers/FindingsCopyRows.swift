import CloudScanCore
import CloudScanInbound
import Foundation

/// Findings as rows of the writer's staging table in COPY's binary format: each field is a length
/// and its bytes, so a string goes from the message body to the server without being escaped,
/// parsed or copied into a Swift string. Columns, in order: organization_id, scan_id,
/// scan_created_at, scanner, rule_id, severity, title, message, path, line, column, cwe (text[]),
/// fingerprint, raw (jsonb).
enum FindingsCopyRows {
    static let columns = 14

    /// The signature, flags and header extension length.
    static let header: [UInt8] = Array("PGCOPY\n".utf8) + [0xFF, 0x0D, 0x0A, 0x00] + [0, 0, 0, 0] + [0, 0, 0, 0]
    /// A field count of -1.
    static let trailer: [UInt8] = [0xFF, 0xFF]
    static let textOID: Int32 = 25
    /// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
    static let postgresEpochMicroseconds: Int64 = 946_684_800_000_000

    /// Appends one row per finding of `batch`. `createdAt` is the scan's created_at in microseconds
    /// since the Unix epoch.
    static func append(_ batch: FindingsBatchParser.Batch, createdAt: Int64, to out: inout [UInt8]) {
        var prefix: [UInt8] = []
        prefix.reserveCapacity(54)
        int16(Int16(columns), &prefix)
        uuid(batch.organizationID, &prefix)
        uuid(batch.scanID, &prefix)
        int32(8, &prefix)
        int64(createdAt - postgresEpochMicroseconds, &prefix)
        batch.storage.withUnsafeBufferPointer { storage in
            func text(_ span: FindingsBatchParser.Span) {
                int32(span.count, &out)
                out.append(
                    contentsOf: UnsafeBufferPointer(rebasing: storage[Int(span.start)..<Int(span.start + span.count)]))
            }
            func integer(_ value: Int32?) {
                guard let value else { return int32(-1, &out) }
                int32(4, &out)
                int32(value, &out)
            }
            for f in batch.findings {
                out.append(contentsOf: prefix)
                text(f.scanner)
                text(f.ruleID)
                let severity = f.severity.rawValue.utf8
                int32(Int32(severity.count), &out)
                out.append(contentsOf: severity)
                text(f.title)
                text(f.message)
                text(f.path)
                integer(f.line)
                integer(f.column)
                // text[]: dimensions, has-null flag, element type, then length and lower bound per
                // dimension, then the elements; an empty array has no dimensions.
                let cwe = batch.cweSpans[Int(f.cwe.lowerBound)..<Int(f.cwe.upperBound)]
                if cwe.isEmpty {
                    int32(12, &out)
                    int32(0, &out)
                    int32(0, &out)
                    int32(textOID, &out)
                } else {
                    int32(Int32(20 + cwe.reduce(0) { $0 + 4 + Int($1.count) }), &out)
                    int32(1, &out)
                    int32(0, &out)
                    int32(textOID, &out)
                    int32(Int32(cwe.count), &out)
                    int32(1, &out)
                    for span in cwe { text(span) }
                }
                text(f.fingerprint)
                if let raw = f.raw {
                    // jsonb: a version byte (1), then the JSON text.
                    int32(raw.count + 1, &out)
                    out.append(1)
                    out.append(
                        contentsOf: UnsafeBufferPointer(rebasing: storage[Int(raw.start)..<Int(raw.start + raw.count)]))
                } else {
                    int32(-1, &out)
                }
            }
        }
    }

    @inline(__always) static func int16(_ value: Int16, _ out: inout [UInt8]) {
        let v = UInt16(bitPattern: value)
        out.append(UInt8(v >> 8))
        out.append(UInt8(v & 0xFF))
    }

    @inline(__always) static func int32(_ value: Int32, _ out: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { out.append(contentsOf: $0) }
    }

    @inline(__always) static func int64(_ value: Int64, _ out: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { out.append(contentsOf: $0) }
    }

    static func uuid(_ id: UUID, _ out: inout [UInt8]) {
        int32(16, &out)
        withUnsafeBytes(of: id.uuid) { out.append(contentsOf: $0) }
    }
}
