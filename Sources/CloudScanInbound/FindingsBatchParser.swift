import CloudScanCore
import Foundation

/// A `findings.batch.v1` body checked against its JSON Schema (topology/schemas/findings.batch.v1.json)
/// in one pass over its bytes: JSON syntax (RFC 8259, UTF-8), required fields, types, bounds, enums,
/// patterns and no unknown fields. The reason of a refusal names the field
/// (`findings[3].severity: not one of …`).
///
/// Nothing is copied that need not be: a string without escapes stays where it is in the body, and
/// a finding's `raw` object is kept as the JSON text it arrived as (jsonb normalizes it anyway). The
/// batch holds the body plus the decoded text of the few strings that had escapes, and its findings
/// point into that (``Span``), which is what the writer's binary COPY reads.
public enum FindingsBatchParser {
    /// Where a string of the batch is: `count` bytes of ``Batch/storage`` from `start`, UTF-8 with no
    /// escapes left (and no NUL: PostgreSQL text cannot hold it, so `\u0000` becomes U+FFFD).
    public struct Span: Sendable, Equatable {
        public var start: Int32
        public var count: Int32
        static let empty = Span(start: 0, count: 0)
    }

    public struct Finding: Sendable {
        public var scanner: Span
        public var ruleID: Span
        public var severity: Severity
        public var title: Span
        /// Empty when the message had none.
        public var message: Span
        /// Empty when the message had none.
        public var path: Span
        public var line: Int32?
        public var column: Int32?
        /// Indexes into the batch's CWE spans (``Batch/cwe(of:)``).
        public var cwe: Range<Int32>
        public var fingerprint: Span
        /// The raw object's JSON text as received, except that escapes jsonb refuses (`\u0000`,
        /// unpaired surrogates) are rewritten to `\ufffd`.
        public var raw: Span?
    }

    public struct Batch: Sendable {
        public var scanID: UUID
        public var organizationID: UUID
        public var attempt: Int
        public var batchIndex: Int
        public var runnerToken: String
        public var findings: [Finding]
        /// The body as received, followed by the decoded text of strings that had escapes.
        public let storage: [UInt8]
        package let bodyCount: Int
        package let cweSpans: [Span]

        /// The text of a span.
        public func text(_ span: Span) -> String {
            let start = Int(span.start)
            return String(decoding: storage[start..<start + Int(span.count)], as: UTF8.self)
        }

        /// A finding's CWE ids.
        public func cwe(of finding: Finding) -> [String] {
            cweSpans[Int(finding.cwe.lowerBound)..<Int(finding.cwe.upperBound)].map(text)
        }

        /// The body as received (for a dead-letter copy).
        public func jsonBody() -> [UInt8] { Array(storage[..<bodyCount]) }
    }

    /// Who a batch says it is from.
    public struct Envelope: Sendable, Equatable {
        public var scanID: UUID
        public var organizationID: UUID
        public var attempt: Int
        public var batchIndex: Int
        public var runnerToken: String
    }

    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public var reason: String
        /// Set when the envelope was valid and only the findings were not: the batch can still be
        /// counted for its scan (refused), so the scan does not wait for it forever.
        public var envelope: Envelope?
        public init(reason: String, envelope: Envelope? = nil) {
            self.reason = reason
            self.envelope = envelope
        }
        public var description: String { reason }
    }

    public static func parse(_ body: [UInt8]) throws(Invalid) -> Batch {
        // Offsets into the body are 32-bit in the staging rows; a runner's batch is at most
        // FindingsBatchMessage.maximumBytes, so twice that is generous and far from overflow.
        guard body.count <= 2 * FindingsBatchMessage.maximumBytes else {
            throw Invalid(reason: "body: over \(2 * FindingsBatchMessage.maximumBytes) bytes")
        }
        let result: Result<Batch, Invalid> = body.withUnsafeBufferPointer { bytes in
            var parser = Parser(bytes)
            do {
                try parser.document()
            } catch {
                return .failure(
                    Invalid(reason: parser.duplicateName ? "a member name appears twice in one object" : "not JSON"))
            }
            return parser.batch(body: body)
        }
        return try result.get()
    }
}

// MARK: - The parser

/// A JSON syntax error (the reason is always "not JSON").
private struct Syntax: Error {}

/// A scanned string: where its bytes are in the body, and what checks need.
private struct StringToken {
    var start: Int
    var end: Int
    /// It has escapes, so its bytes must be decoded.
    var escaped: Bool
    /// Unicode code points (what JSON Schema's lengths count).
    var codePoints: Int
}

/// What an integer field held.
private enum IntegerValue {
    case value(Int)
    case notInteger
    case below
    case tooLarge
}

private enum FieldValue<T> {
    case missing
    case wrongType
    case value(T)
}

private struct Parser {
    let p: UnsafeBufferPointer<UInt8>
    var i = 0
    /// Decoded text of escaped strings (and rewritten raw objects), to follow the body.
    var extra: [UInt8] = []
    var cweSpans: [FindingsBatchParser.Span] = []
    var findings: [FindingsBatchParser.Finding] = []
    /// A string with `\u0000` or an unpaired surrogate escape was scanned (raw objects need those
    /// rewritten for jsonb).
    var sawEscapeJSONBRefuses = false
    var topIsObject = false
    /// Set when a syntax error is a member name given twice in one object: readers disagree on
    /// which one counts (first, last), so such a document is refused rather than read one way.
    var duplicateName = false

    // The envelope, as found.
    var unknownTopKey: String?
    var scanID: FieldValue<StringToken> = .missing
    var organizationID: FieldValue<StringToken> = .missing
    var runnerToken: FieldValue<StringToken> = .missing
    var attempt: FieldValue<IntegerValue> = .missing
    var batchIndex: FieldValue<IntegerValue> = .missing
    var findingsFound: FieldValue<Int> = .missing
    /// The first thing wrong with the findings.
    var findingsError: String?

    static let maximumDepth = 512

    init(_ p: UnsafeBufferPointer<UInt8>) { self.p = p }

    // MARK: Bytes

    @inline(__always) var byte: UInt8 { i < p.count ? p[i] : 0 }

    @inline(__always) mutating func skipWhitespace() {
        while i < p.count {
            let b = p[i]
            guard b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 else { return }
            i += 1
        }
    }

    @inline(__always) mutating func expect(_ b: UInt8) throws(Syntax) {
        guard i < p.count, p[i] == b else { throw Syntax() }
        i += 1
    }

    /// After a member or element: true on `,`, false on `close`.
    @inline(__always) mutating func next(close: UInt8) throws(Syntax) -> Bool {
        skipWhitespace()
        guard i < p.count else { throw Syntax() }
        let b = p[i]
        i += 1
        if b == 0x2C { return true }
        if b == close { return false }
        throw Syntax()
    }

    // MARK: Strings

    func hex4(at index: Int) throws(Syntax) -> UInt32 {
        guard index + 4 <= p.count else { throw Syntax() }
        var value: UInt32 = 0
        for k in index..<index + 4 {
            let b = p[k]
            let digit: UInt8
            switch b {
            case 0x30...0x39: digit = b - 0x30
            case 0x61...0x66: digit = b - 0x61 + 10
            case 0x41...0x46: digit = b - 0x41 + 10
            default: throw Syntax()
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }

    /// Scans a string at `"`, checking escapes and UTF-8.
    mutating func string() throws(Syntax) -> StringToken {
        try expect(0x22)
        let start = i
        var escaped = false
        var codePoints = 0
        while true {
            guard i < p.count else { throw Syntax() }
            let b = p[i]
            if b == 0x22 { break }
            codePoints += 1
            if b < 0x80 {
                if b == 0x5C {
                    escaped = true
                    try escape()
                } else {
                    guard b >= 0x20 else { throw Syntax() }
                    i += 1
                }
                continue
            }
            i += try utf8Sequence(at: i)
        }
        let end = i
        i += 1
        return StringToken(start: start, end: end, escaped: escaped, codePoints: codePoints)
    }

    /// One escape at `\`.
    mutating func escape() throws(Syntax) {
        guard i + 1 < p.count else { throw Syntax() }
        switch p[i + 1] {
        case 0x22, 0x5C, 0x2F, 0x62, 0x66, 0x6E, 0x72, 0x74:
            i += 2
        case 0x75:
            let value = try hex4(at: i + 2)
            i += 6
            if value == 0 {
                sawEscapeJSONBRefuses = true
            } else if (0xD800..<0xDC00).contains(value) {
                if i + 6 <= p.count, p[i] == 0x5C, p[i + 1] == 0x75, (0xDC00..<0xE000).contains(try hex4(at: i + 2)) {
                    i += 6  // a pair: one code point
                } else {
                    sawEscapeJSONBRefuses = true
                }
            } else if (0xDC00..<0xE000).contains(value) {
                sawEscapeJSONBRefuses = true
            }
        default:
            throw Syntax()
        }
    }

    /// The length of a well-formed UTF-8 sequence at `index` (a byte ≥ 0x80).
    func utf8Sequence(at index: Int) throws(Syntax) -> Int {
        let b0 = p[index]
        let length: Int
        var low: UInt8 = 0x80
        var high: UInt8 = 0xBF
        switch b0 {
        case 0xC2...0xDF: length = 2
        case 0xE0:
            length = 3
            low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED:
            length = 3
            high = 0x9F
        case 0xF0:
            length = 4
            low = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4:
            length = 4
            high = 0x8F
        default: throw Syntax()
        }
        guard index + length <= p.count else { throw Syntax() }
        let b1 = p[index + 1]
        guard b1 >= low, b1 <= high else { throw Syntax() }
        for k in index + 2..<index + length where p[k] & 0xC0 != 0x80 { throw Syntax() }
        return length
    }

    /// The span of a scanned string, decoding it into `extra` when it had escapes.
    mutating func span(_ token: StringToken) -> FindingsBatchParser.Span {
        guard token.escaped else {
            return .init(start: Int32(token.start), count: Int32(token.end - token.start))
        }
        let start = p.count + extra.count
        decode(token, into: &extra)
        return .init(start: Int32(start), count: Int32(p.count + extra.count - start))
    }

    /// The UTF-8 of an escaped string (`\u0000` and unpaired surrogates as U+FFFD).
    func decode(_ token: StringToken, into out: inout [UInt8]) {
        var j = token.start
        while j < token.end {
            let b = p[j]
            guard b == 0x5C else {
                out.append(b)
                j += 1
                continue
            }
            let c = p[j + 1]
            j += 2
            switch c {
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0C)
            case 0x6E: out.append(0x0A)
            case 0x72: out.append(0x0D)
            case 0x74: out.append(0x09)
            case 0x75:
                var scalar = (try? hex4(at: j)) ?? 0
                j += 4
                if (0xD800..<0xDC00).contains(scalar) {
                    if j + 6 <= token.end, p[j] == 0x5C, p[j + 1] == 0x75, let low = try? hex4(at: j + 2),
                        (0xDC00..<0xE000).contains(low)
                    {
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        j += 6
                    } else {
                        scalar = 0xFFFD
                    }
                } else if scalar == 0 || (0xDC00..<0xE000).contains(scalar) {
                    scalar = 0xFFFD
                }
                Self.appendUTF8(scalar, to: &out)
            default: out.append(c)  // " \ /
            }
        }
    }

    static func appendUTF8(_ scalar: UInt32, to out: inout [UInt8]) {
        switch scalar {
        case 0..<0x80: out.append(UInt8(scalar))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | scalar >> 6))
            out.append(UInt8(0x80 | scalar & 0x3F))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | scalar >> 12))
            out.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            out.append(UInt8(0x80 | scalar & 0x3F))
        default:
            out.append(UInt8(0xF0 | scalar >> 18))
            out.append(UInt8(0x80 | scalar >> 12 & 0x3F))
            out.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            out.append(UInt8(0x80 | scalar & 0x3F))
        }
    }

    /// A decoded string as Swift text (keys, reasons, the envelope).
    func text(_ token: StringToken) -> String {
        guard token.escaped else {
            return String(decoding: UnsafeBufferPointer(rebasing: p[token.start..<token.end]), as: UTF8.self)
        }
        var out: [UInt8] = []
        decode(token, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// A hash of a member name's decoded text (a name with escapes is decoded first).
    func nameHash(_ token: StringToken) -> Int {
        var hasher = Hasher()
        if token.escaped {
            var out: [UInt8] = []
            decode(token, into: &out)
            out.withUnsafeBytes { hasher.combine(bytes: $0) }
        } else {
            hasher.combine(bytes: UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: p[token.start..<token.end])))
        }
        return hasher.finalize()
    }

    /// Whether a key is `name` (which is ASCII).
    func key(_ token: StringToken, is name: StaticString) -> Bool {
        guard !token.escaped else { return text(token) == name.description }
        guard token.end - token.start == name.utf8CodeUnitCount else { return false }
        return memcmp(p.baseAddress! + token.start, name.utf8Start, name.utf8CodeUnitCount) == 0
    }

    // MARK: Numbers and other values

    /// Scans a number; returns whether it is written as an integer (no fraction, no exponent).
    mutating func number() throws(Syntax) -> (start: Int, end: Int, plain: Bool) {
        let start = i
        if byte == 0x2D { i += 1 }
        guard (0x30...0x39).contains(byte) else { throw Syntax() }
        if byte == 0x30 {
            i += 1
        } else {
            while (0x30...0x39).contains(byte) { i += 1 }
        }
        var plain = true
        if byte == 0x2E {
            plain = false
            i += 1
            guard (0x30...0x39).contains(byte) else { throw Syntax() }
            while (0x30...0x39).contains(byte) { i += 1 }
        }
        if byte == 0x65 || byte == 0x45 {
            plain = false
            i += 1
            if byte == 0x2B || byte == 0x2D { i += 1 }
            guard (0x30...0x39).contains(byte) else { throw Syntax() }
            while (0x30...0x39).contains(byte) { i += 1 }
        }
        return (start, i, plain)
    }

    /// An integer field's value (any JSON value is consumed).
    mutating func integer(minimum: Int) throws(Syntax) -> IntegerValue {
        guard byte == 0x2D || (0x30...0x39).contains(byte) else {
            try skipValue(depth: 0)
            return .notInteger
        }
        let (start, end, plain) = try number()
        var value = 0
        if plain {
            var negative = false
            var k = start
            if p[k] == 0x2D {
                negative = true
                k += 1
            }
            var overflow = false
            while k < end {
                let (times, o1) = value.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times.addingReportingOverflow(Int(p[k] - 0x30))
                overflow = overflow || o1 || o2
                value = sum
                k += 1
            }
            if overflow { return negative ? .below : .tooLarge }
            if negative { value = -value }
        } else {
            let text = String(decoding: UnsafeBufferPointer(rebasing: p[start..<end]), as: UTF8.self)
            guard let double = Double(text), double.isFinite, double == double.rounded(.towardZero) else {
                return .notInteger
            }
            if double < Double(minimum) { return .below }
            if double > Double(Int32.max) { return .tooLarge }
            value = Int(double)
        }
        if value < minimum { return .below }
        if value > Int(Int32.max) { return .tooLarge }
        return .value(value)
    }

    mutating func literal(_ word: StaticString) throws(Syntax) {
        let n = word.utf8CodeUnitCount
        guard i + n <= p.count, memcmp(p.baseAddress! + i, word.utf8Start, n) == 0 else { throw Syntax() }
        i += n
    }

    /// An object at `{`: calls `each` with every member's name, the value next for it to consume.
    mutating func members(_ each: (inout Parser, StringToken) throws(Syntax) -> Void) throws(Syntax) {
        try expect(0x7B)
        skipWhitespace()
        if byte == 0x7D {
            i += 1
            return
        }
        var hashes = Set<Int>()
        var names: [StringToken] = []
        repeat {
            skipWhitespace()
            let name = try string()
            let hash = nameHash(name)
            if !hashes.insert(hash).inserted,
                names.contains(where: { nameHash($0) == hash && text($0) == text(name) })
            {
                duplicateName = true
                throw Syntax()
            }
            names.append(name)
            skipWhitespace()
            try expect(0x3A)
            skipWhitespace()
            try each(&self, name)
        } while try next(close: 0x7D)
    }

    /// Checks and consumes any JSON value.
    mutating func skipValue(depth: Int) throws(Syntax) {
        guard depth < Self.maximumDepth else { throw Syntax() }
        switch byte {
        case 0x7B:  // {
            try members { parser, _ throws(Syntax) in try parser.skipValue(depth: depth + 1) }
        case 0x5B:  // [
            i += 1
            skipWhitespace()
            if byte == 0x5D {
                i += 1
                return
            }
            repeat {
                skipWhitespace()
                try skipValue(depth: depth + 1)
            } while try next(close: 0x5D)
        case 0x22: _ = try string()
        case 0x74: try literal("true")
        case 0x66: try literal("false")
        case 0x6E: try literal("null")
        default: _ = try number()
        }
    }

    // MARK: The document

    mutating func document() throws(Syntax) {
        skipWhitespace()
        guard byte == 0x7B else {
            try skipValue(depth: 0)
            skipWhitespace()
            guard i == p.count else { throw Syntax() }
            return
        }
        topIsObject = true
        try members { parser, name throws(Syntax) in
            if parser.key(name, is: "findings") {
                // Given twice, the last one counts.
                parser.findings.removeAll()
                parser.cweSpans.removeAll()
                parser.findingsError = nil
                if parser.byte == 0x5B {
                    parser.findingsFound = .value(try parser.findingsArray())
                } else {
                    try parser.skipValue(depth: 0)
                    parser.findingsFound = .wrongType
                }
            } else if parser.key(name, is: "scan_id") {
                parser.scanID = try parser.stringField()
            } else if parser.key(name, is: "organization_id") {
                parser.organizationID = try parser.stringField()
            } else if parser.key(name, is: "runner_token") {
                parser.runnerToken = try parser.stringField()
            } else if parser.key(name, is: "attempt") {
                parser.attempt = .value(try parser.integer(minimum: 0))
            } else if parser.key(name, is: "batch_index") {
                parser.batchIndex = .value(try parser.integer(minimum: 0))
            } else {
                if parser.unknownTopKey == nil { parser.unknownTopKey = parser.text(name) }
                try parser.skipValue(depth: 0)
            }
        }
        skipWhitespace()
        guard i == p.count else { throw Syntax() }
    }

    mutating func stringField() throws(Syntax) -> FieldValue<StringToken> {
        guard byte == 0x22 else {
            try skipValue(depth: 0)
            return .wrongType
        }
        return .value(try string())
    }

    /// The findings array at `[`; returns its length.
    mutating func findingsArray() throws(Syntax) -> Int {
        i += 1
        skipWhitespace()
        if byte == 0x5D {
            i += 1
            return 0
        }
        var count = 0
        repeat {
            skipWhitespace()
            if count < FindingsBatchMessage.maximumFindings, findingsError == nil {
                try finding(index: count)
            } else {
                try skipValue(depth: 1)
            }
            count += 1
        } while try next(close: 0x5D)
        return count
    }

    mutating func fail(_ index: Int, _ what: @autoclosure () -> String) {
        if findingsError == nil { findingsError = "findings[\(index)]\(what())" }
    }

    /// A finding's field as checked. A key given twice counts once, the last time (as JSON
    /// parsers and validators read such objects).
    enum Checked<T> {
        case missing
        case invalid(String)
        case value(T)
    }

    /// A string field of a finding, checked for its length in code points.
    mutating func findingString(
        _ name: String, minLength: Int = 1, maxLength: Int
    ) throws(Syntax) -> Checked<FindingsBatchParser.Span> {
        guard byte == 0x22 else {
            try skipValue(depth: 1)
            return .invalid(".\(name): not a string")
        }
        let token = try string()
        if token.codePoints < minLength { return .invalid(".\(name): empty") }
        if token.codePoints > maxLength { return .invalid(".\(name): longer than \(maxLength) characters") }
        return .value(span(token))
    }

    static let severities: [(StaticString, Severity)] = [
        ("critical", .critical), ("high", .high), ("medium", .medium), ("low", .low), ("info", .info),
    ]

    /// One finding (any value at this position is consumed; what is wrong goes to `findingsError`).
    mutating func finding(index: Int) throws(Syntax) {
        guard byte == 0x7B else {
            try skipValue(depth: 1)
            fail(index, ": not an object")
            return
        }
        typealias Span = FindingsBatchParser.Span
        var scanner: Checked<Span> = .missing
        var ruleID: Checked<Span> = .missing
        var severity: Checked<Severity> = .missing
        var title: Checked<Span> = .missing
        var message: Checked<Span> = .missing
        var path: Checked<Span> = .missing
        var line: Checked<Int32> = .missing
        var column: Checked<Int32> = .missing
        var cwe: Checked<Range<Int32>> = .missing
        var fingerprint: Checked<Span> = .missing
        var raw: Checked<Span> = .missing
        var unknownKey: String?
        try members { parser, name throws(Syntax) in
            if parser.key(name, is: "scanner") {
                scanner = try parser.findingString("scanner", maxLength: 100)
            } else if parser.key(name, is: "rule_id") {
                ruleID = try parser.findingString("rule_id", maxLength: 500)
            } else if parser.key(name, is: "severity") {
                severity = try parser.severityField()
            } else if parser.key(name, is: "title") {
                title = try parser.findingString("title", maxLength: 1000)
            } else if parser.key(name, is: "message") {
                message = try parser.findingString("message", minLength: 0, maxLength: 10000)
            } else if parser.key(name, is: "path") {
                path = try parser.findingString("path", minLength: 0, maxLength: 4096)
            } else if parser.key(name, is: "line") {
                line = try parser.integerField("line")
            } else if parser.key(name, is: "column") {
                column = try parser.integerField("column")
            } else if parser.key(name, is: "cwe") {
                if case .value(let earlier) = cwe {
                    parser.cweSpans.removeLast(parser.cweSpans.count - Int(earlier.lowerBound))
                }
                cwe = try parser.cweField()
            } else if parser.key(name, is: "fingerprint") {
                fingerprint = try parser.findingString("fingerprint", maxLength: 256)
            } else if parser.key(name, is: "raw") {
                raw = try parser.rawField()
            } else {
                if unknownKey == nil { unknownKey = parser.text(name) }
                try parser.skipValue(depth: 1)
            }
        }
        if let unknownKey { return fail(index, ".\(unknownKey): not a field of a finding") }
        func required<T>(_ field: Checked<T>, _ name: String) -> T? {
            switch field {
            case .missing:
                fail(index, ".\(name): missing")
                return nil
            case .invalid(let reason):
                fail(index, reason)
                return nil
            case .value(let value): return value
            }
        }
        func optional<T>(_ field: Checked<T>) -> T?? {
            switch field {
            case .missing: return .some(nil)
            case .invalid(let reason):
                fail(index, reason)
                return nil
            case .value(let value): return .some(value)
            }
        }
        guard let scanner = required(scanner, "scanner"), let ruleID = required(ruleID, "rule_id"),
            let severity = required(severity, "severity"), let title = required(title, "title"),
            let message = optional(message), let path = optional(path), let line = optional(line),
            let column = optional(column), let cwe = optional(cwe),
            let fingerprint = required(fingerprint, "fingerprint"), let raw = optional(raw)
        else { return }
        let none = Int32(cweSpans.count)..<Int32(cweSpans.count)
        findings.append(
            .init(
                scanner: scanner, ruleID: ruleID, severity: severity, title: title, message: message ?? .empty,
                path: path ?? .empty, line: line, column: column, cwe: cwe ?? none, fingerprint: fingerprint,
                raw: raw))
    }

    mutating func severityField() throws(Syntax) -> Checked<Severity> {
        let reason = ".severity: not one of critical, high, medium, low, info"
        guard byte == 0x22 else {
            try skipValue(depth: 1)
            return .invalid(reason)
        }
        let token = try string()
        for (name, severity) in Self.severities where key(token, is: name) { return .value(severity) }
        return .invalid(reason)
    }

    mutating func integerField(_ name: String) throws(Syntax) -> Checked<Int32> {
        switch try integer(minimum: 0) {
        case .value(let value): return .value(Int32(value))
        case .notInteger: return .invalid(".\(name): not an integer")
        case .below: return .invalid(".\(name): below 0")
        case .tooLarge: return .invalid(".\(name): too large")
        }
    }

    /// `cwe`: an array of `CWE-<digits>` strings; their spans are appended to `cweSpans`.
    mutating func cweField() throws(Syntax) -> Checked<Range<Int32>> {
        guard byte == 0x5B else {
            try skipValue(depth: 1)
            return .invalid(".cwe: not an array")
        }
        let start = cweSpans.count
        var problem: String?
        i += 1
        skipWhitespace()
        if byte == 0x5D {
            i += 1
        } else {
            var n = 0
            repeat {
                skipWhitespace()
                if byte == 0x22 {
                    let span = span(try string())
                    if isCWE(span) {
                        cweSpans.append(span)
                    } else if problem == nil {
                        problem = ".cwe[\(n)]: not CWE-<number>"
                    }
                } else {
                    try skipValue(depth: 2)
                    if problem == nil { problem = ".cwe[\(n)]: not CWE-<number>" }
                }
                n += 1
            } while try next(close: 0x5D)
        }
        if let problem {
            cweSpans.removeLast(cweSpans.count - start)
            return .invalid(problem)
        }
        return .value(Int32(start)..<Int32(cweSpans.count))
    }

    /// `^CWE-[0-9]+$` on a span (of the body or of `extra`).
    func isCWE(_ span: FindingsBatchParser.Span) -> Bool {
        let start = Int(span.start)
        let count = Int(span.count)
        func at(_ k: Int) -> UInt8 { k < p.count ? p[k] : extra[k - p.count] }
        guard count > 4, at(start) == 0x43, at(start + 1) == 0x57, at(start + 2) == 0x45, at(start + 3) == 0x2D
        else { return false }
        for k in start + 4..<start + count where !(0x30...0x39).contains(at(k)) { return false }
        return true
    }

    /// `raw`: any JSON object, kept as its text.
    mutating func rawField() throws(Syntax) -> Checked<FindingsBatchParser.Span> {
        guard byte == 0x7B else {
            try skipValue(depth: 1)
            return .invalid(".raw: not an object")
        }
        let start = i
        sawEscapeJSONBRefuses = false
        try skipValue(depth: 2)
        guard sawEscapeJSONBRefuses else { return .value(.init(start: Int32(start), count: Int32(i - start))) }
        // Rewrite what jsonb refuses in a copy: `\u0000` and unpaired surrogates become `\ufffd`
        // (same length). Backslashes only occur in strings, so escapes are read pairwise.
        let copyStart = extra.count
        extra.append(contentsOf: UnsafeBufferPointer(rebasing: p[start..<i]))
        var j = copyStart
        while j < extra.count {
            guard extra[j] == 0x5C else {
                j += 1
                continue
            }
            guard extra[j + 1] == 0x75 else {
                j += 2
                continue
            }
            let value = Self.hex(extra, j + 2)
            if (0xD800..<0xDC00).contains(value), j + 12 <= extra.count, extra[j + 6] == 0x5C, extra[j + 7] == 0x75,
                (0xDC00..<0xE000).contains(Self.hex(extra, j + 8))
            {
                j += 12
                continue
            }
            if value == 0 || (0xD800..<0xE000).contains(value) {
                extra.replaceSubrange(j + 2..<j + 6, with: [0x66, 0x66, 0x66, 0x64])  // fffd
            }
            j += 6
        }
        return .value(.init(start: Int32(p.count + copyStart), count: Int32(i - start)))
    }

    static func hex(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        var value: UInt32 = 0
        for k in at..<at + 4 {
            let b = bytes[k]
            let digit: UInt32 =
                switch b {
                case 0x30...0x39: UInt32(b - 0x30)
                case 0x61...0x66: UInt32(b - 0x61 + 10)
                default: UInt32(b - 0x41 + 10)
                }
            value = value << 4 | digit
        }
        return value
    }

    // MARK: The verdict

    func batch(body: [UInt8]) -> Result<FindingsBatchParser.Batch, FindingsBatchParser.Invalid> {
        typealias Invalid = FindingsBatchParser.Invalid
        guard topIsObject else { return .failure(Invalid(reason: "not a JSON object")) }
        if let unknownTopKey { return .failure(Invalid(reason: "\(unknownTopKey): not a field of findings.batch.v1")) }
        func uuid(_ field: FieldValue<StringToken>, _ name: String) -> Result<UUID, Invalid> {
            switch field {
            case .missing: return .failure(Invalid(reason: "\(name): missing"))
            case .wrongType: return .failure(Invalid(reason: "\(name): not a UUID"))
            case .value(let token):
                guard let id = UUID(uuidString: text(token)) else {
                    return .failure(Invalid(reason: "\(name): not a UUID"))
                }
                return .success(id)
            }
        }
        func integer(_ field: FieldValue<IntegerValue>, _ name: String) -> Result<Int, Invalid> {
            switch field {
            case .missing: return .failure(Invalid(reason: "\(name): missing"))
            case .wrongType, .value(.notInteger): return .failure(Invalid(reason: "\(name): not an integer"))
            case .value(.below): return .failure(Invalid(reason: "\(name): below 0"))
            case .value(.tooLarge): return .failure(Invalid(reason: "\(name): too large"))
            case .value(.value(let value)): return .success(value)
            }
        }
        let envelope: FindingsBatchParser.Envelope
        do throws(Invalid) {
            let token: String
            switch runnerToken {
            case .missing: throw Invalid(reason: "runner_token: missing")
            case .wrongType: throw Invalid(reason: "runner_token: not a string")
            case .value(let t):
                guard t.codePoints >= 1 else { throw Invalid(reason: "runner_token: empty") }
                guard t.codePoints <= 512 else { throw Invalid(reason: "runner_token: longer than 512 characters") }
                token = text(t)
            }
            envelope = .init(
                scanID: try uuid(scanID, "scan_id").get(),
                organizationID: try uuid(organizationID, "organization_id").get(),
                attempt: try integer(attempt, "attempt").get(),
                batchIndex: try integer(batchIndex, "batch_index").get(),
                runnerToken: token)
        } catch {
            return .failure(error)
        }
        switch findingsFound {
        case .missing: return .failure(Invalid(reason: "findings: missing", envelope: envelope))
        case .wrongType: return .failure(Invalid(reason: "findings: not an array", envelope: envelope))
        case .value(let count) where count > FindingsBatchMessage.maximumFindings:
            return .failure(
                Invalid(
                    reason: "findings: more than \(FindingsBatchMessage.maximumFindings) items", envelope: envelope))
        case .value:
            if let findingsError { return .failure(Invalid(reason: findingsError, envelope: envelope)) }
        }
        var storage = body
        storage.append(contentsOf: extra)
        return .success(
            .init(
                scanID: envelope.scanID, organizationID: envelope.organizationID, attempt: envelope.attempt,
                batchIndex: envelope.batchIndex, runnerToken: envelope.runnerToken, findings: findings,
                storage: storage, bodyCount: body.count, cweSpans: cweSpans))
    }
}
