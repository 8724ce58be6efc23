import Foundation

/// A PostgreSQL type OID, as the module uses it for parameters and result columns.
public struct PostgresDataType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Let the server infer the parameter's type from its context.
    public static let unspecified = PostgresDataType(rawValue: 0)
    public static let bool = PostgresDataType(rawValue: 16)
    public static let bytea = PostgresDataType(rawValue: 17)
    public static let int8 = PostgresDataType(rawValue: 20)
    public static let int2 = PostgresDataType(rawValue: 21)
    public static let int4 = PostgresDataType(rawValue: 23)
    public static let text = PostgresDataType(rawValue: 25)
    public static let float8 = PostgresDataType(rawValue: 701)
    public static let textArray = PostgresDataType(rawValue: 1009)
    public static let varchar = PostgresDataType(rawValue: 1043)
    public static let timestamptz = PostgresDataType(rawValue: 1184)
    public static let uuid = PostgresDataType(rawValue: 2950)
    public static let jsonb = PostgresDataType(rawValue: 3802)
}

/// A Swift value that can be sent as a query parameter (text format).
public protocol PostgresEncodable: Sendable {
    /// The parameter's type; `.unspecified` lets the server infer it.
    static var postgresDataType: PostgresDataType { get }
    /// The value in PostgreSQL's text format.
    var postgresText: String { get }
    /// Appends ``postgresText``'s UTF-8 bytes (types with a cheaper path override it: COPY uses it).
    func appendPostgresText(to buffer: inout [UInt8])
    /// Whether the text can contain a byte COPY's text format must escape (tab, newline, CR, backslash).
    static var postgresTextMayNeedEscaping: Bool { get }
}

extension PostgresEncodable {
    public func appendPostgresText(to buffer: inout [UInt8]) {
        buffer.append(contentsOf: postgresText.utf8)
    }
    public static var postgresTextMayNeedEscaping: Bool { true }
}

/// A Swift value that can be decoded from a result column (text format).
public protocol PostgresDecodable: Sendable {
    /// Decodes a non-NULL value.
    static func decode(postgresText: String, type: PostgresDataType) throws -> Self
    /// Decodes SQL NULL; non-optional types throw.
    static func decodeNull() throws -> Self
}

extension PostgresDecodable {
    public static func decodeNull() throws -> Self {
        throw PostgresError(code: .decoding, message: "NULL cannot be decoded as \(Self.self)")
    }
}

/// A value both ways.
public typealias PostgresCodable = PostgresDecodable & PostgresEncodable

extension Optional: PostgresDecodable where Wrapped: PostgresDecodable {
    public static func decode(postgresText: String, type: PostgresDataType) throws -> Self {
        try Wrapped.decode(postgresText: postgresText, type: type)
    }
    public static func decodeNull() throws -> Self { nil }
}

private func decodingError<T>(_ text: String, _ type: T.Type, _ pgType: PostgresDataType) -> PostgresError {
    // The value itself is not put into the message: it may be tenant data.
    PostgresError(code: .decoding, message: "cannot decode a value of type oid \(pgType.rawValue) as \(T.self)")
}

extension String: PostgresCodable {
    public static var postgresDataType: PostgresDataType { .unspecified }
    public var postgresText: String { self }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> String { postgresText }
}

extension Bool: PostgresCodable {
    public static var postgresDataType: PostgresDataType { .bool }
    public var postgresText: String { self ? "t" : "f" }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> Bool {
        switch postgresText {
        case "t", "true": return true
        case "f", "false": return false
        default: throw decodingError(postgresText, Bool.self, type)
        }
    }
}

extension Int: PostgresCodable {
    public static var postgresDataType: PostgresDataType { .int8 }
    public var postgresText: String { String(self) }
    public static var postgresTextMayNeedEscaping: Bool { false }
    public func appendPostgresText(to buffer: inout [UInt8]) { PostgresDigits.append(Int64(self), to: &buffer) }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> Int {
        guard let value = Int(postgresText) else { throw decodingError(postgresText, Int.self, type) }
        return value
    }
}

extension Int32: PostgresCodable {
    public static var postgresDataType: PostgresDataType { .int4 }
    public var postgresText: String { String(self) }
    public static var postgresTextMayNeedEscaping: Bool { false }
    public func appendPostgresText(to buffer: inout [UInt8]) { PostgresDigits.append(Int64(self), to: &buffer) }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> Int32 {
        guard let value = Int32(postgresText) else { throw decodingError(postgresText, Int32.self, type) }
        return value
    }
}

extension Int64: PostgresCodable {
    public static var postgresDataType: PostgresDataType { .int8 }
    public var postgresText: String { String(self) }
    public static var postgresTextMayNeedEscaping: Bool { false }
    public func appendPostgresText(to buffer: inout [UInt8]) { PostgresDigits.append(self, to: &buffer) }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> Int64 {
        guard let value = Int64(postgresText) else { throw decodingError(postgresText, Int64.self, type) }
        return value
    }
}

extension Double: PostgresCodable {
    public static var postgresDataType: PostgresDataType { .float8 }
    public var postgresText: String { "\(self)" }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> Double {
        guard let value = Double(postgresText) else { throw decodingError(postgresText, Double.self, type) }
        return value
    }
}

extension UUID: PostgresCodable {
    public static var postgresDataType: PostgresDataType { .uuid }
    public var postgresText: String { uuidString.lowercased() }
    public static var postgresTextMayNeedEscaping: Bool { false }
    public func appendPostgresText(to buffer: inout [UInt8]) {
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        withUnsafeBytes(of: uuid) { bytes in
            for (index, byte) in bytes.enumerated() {
                if index == 4 || index == 6 || index == 8 || index == 10 { buffer.append(UInt8(ascii: "-")) }
                buffer.append(hex[Int(byte >> 4)])
                buffer.append(hex[Int(byte & 0x0F)])
            }
        }
    }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> UUID {
        guard let value = UUID(uuidString: postgresText) else { throw decodingError(postgresText, UUID.self, type) }
        return value
    }
}

extension Date: PostgresCodable {
    public static var postgresDataType: PostgresDataType { .timestamptz }
    /// `YYYY-MM-DD HH:MM:SS.ffffff+00`, always UTC, microsecond precision.
    public var postgresText: String { PostgresTimestamp.format(self) }
    public static var postgresTextMayNeedEscaping: Bool { false }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> Date {
        guard let value = PostgresTimestamp.parse(postgresText) else {
            throw decodingError(postgresText, Date.self, type)
        }
        return value
    }
}

/// A `jsonb` value, carried as its JSON text.
public struct PostgresJSONB: PostgresCodable, Hashable {
    /// The JSON document's text.
    public var text: String
    /// Wraps JSON text (not validated here; the server validates it).
    public init(text: String) { self.text = text }
    /// Encodes a value with `JSONEncoder` (sorted keys, so equal values give equal text).
    public init(encoding value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        self.text = String(decoding: try encoder.encode(value), as: UTF8.self)
    }
    /// Decodes the JSON text with `JSONDecoder`.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(text.utf8))
    }
    public static var postgresDataType: PostgresDataType { .jsonb }
    public var postgresText: String { text }
    public static func decode(postgresText: String, type: PostgresDataType) throws -> PostgresJSONB {
        PostgresJSONB(text: postgresText)
    }
}

extension Array: PostgresEncodable where Element == String {
    public static var postgresDataType: PostgresDataType { .textArray }
    public var postgresText: String { PostgresArrayLiteral.format(self) }
}

extension Array: PostgresDecodable where Element == String {
    public static func decode(postgresText: String, type: PostgresDataType) throws -> [String] {
        guard let values = PostgresArrayLiteral.parse(postgresText) else {
            throw decodingError(postgresText, [String].self, type)
        }
        return values
    }
}

/// A parameter that binds SQL NULL with an explicit type.
public struct PostgresNull: PostgresEncodable {
    public init() {}
    public static var postgresDataType: PostgresDataType { .unspecified }
    public var postgresText: String { "" }
}

/// One bound parameter: its text (nil for NULL) and type.
public struct PostgresBind: Sendable {
    /// Text format, nil for SQL NULL.
    public var text: String?
    /// The declared type.
    public var type: PostgresDataType

    /// Binds a value, or NULL for nil.
    public init<T: PostgresEncodable>(_ value: T?) {
        self.text = value?.postgresText
        self.type = T.postgresDataType
    }
}

/// One-dimensional text array literals: `{a,"b c",NULL}`.
enum PostgresArrayLiteral {
    static func format(_ values: [String]) -> String {
        var out = "{"
        for (index, value) in values.enumerated() {
            if index > 0 { out.append(",") }
            out.append("\"")
            for character in value {
                if character == "\"" || character == "\\" { out.append("\\") }
                out.append(character)
            }
            out.append("\"")
        }
        out.append("}")
        return out
    }

    /// Parses a one-dimensional array literal; NULL elements are not allowed (nil result).
    static func parse(_ text: String) -> [String]? {
        let chars = Array(text.utf8)
        guard chars.first == UInt8(ascii: "{"), chars.last == UInt8(ascii: "}") else { return nil }
        var values: [String] = []
        var index = 1
        let end = chars.count - 1
        if index == end { return [] }
        while index <= end {
            var element: [UInt8] = []
            var quoted = false
            if chars[index] == UInt8(ascii: "\"") {
                quoted = true
                index += 1
                while index < end, chars[index] != UInt8(ascii: "\"") {
                    if chars[index] == UInt8(ascii: "\\") { index += 1 }
                    guard index < end else { return nil }
                    element.append(chars[index])
                    index += 1
                }
                index += 1  // closing quote
            } else {
                while index < end, chars[index] != UInt8(ascii: ",") {
                    element.append(chars[index])
                    index += 1
                }
            }
            let string = String(decoding: element, as: UTF8.self)
            if !quoted, string == "NULL" { return nil }
            values.append(string)
            guard index <= end else { return nil }
            if index == end { break }
            guard chars[index] == UInt8(ascii: ",") else { return nil }
            index += 1
        }
        return values
    }
}

/// Decimal digits without an intermediate String.
enum PostgresDigits {
    static func append(_ value: Int64, to buffer: inout [UInt8]) {
        if value == 0 {
            buffer.append(UInt8(ascii: "0"))
            return
        }
        var magnitude = value.magnitude
        var scratch = [UInt8](repeating: 0, count: 20)
        var index = 20
        while magnitude > 0 {
            index -= 1
            scratch[index] = UInt8(ascii: "0") + UInt8(magnitude % 10)
            magnitude /= 10
        }
        if value < 0 { buffer.append(UInt8(ascii: "-")) }
        buffer.append(contentsOf: scratch[index...])
    }
}

/// Timestamps in the ISO output style the module's sessions use (`DateStyle=ISO`, `TimeZone=UTC`).
enum PostgresTimestamp {
    static func format(_ date: Date) -> String {
        // Whole seconds and the fraction separately: far from 1970 a Double has no microseconds left.
        // Outside PostgreSQL's years 1–9999 (and NaN) a value is clamped to the nearest end, so the
        // conversions below cannot overflow; callers bound dates from outside to that range.
        let raw = date.timeIntervalSince1970
        let interval = raw.isNaN ? 0 : min(max(raw, -62_135_596_800), 253_402_300_799)
        var seconds = Int(floor(interval))
        var micros = Int(((interval - floor(interval)) * 1_000_000).rounded())
        if micros >= 1_000_000 {
            seconds += 1
            micros -= 1_000_000
        }
        var tmValue = tm()
        var time = time_t(seconds)
        gmtime_r(&time, &tmValue)
        func pad<Value: BinaryInteger>(_ value: Value, _ width: Int) -> String {
            let s = String(value)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        let microText = String(micros)
        return "\(pad(Int(tmValue.tm_year) + 1900, 4))-\(pad(tmValue.tm_mon + 1, 2))-\(pad(tmValue.tm_mday, 2)) "
            + "\(pad(tmValue.tm_hour, 2)):\(pad(tmValue.tm_min, 2)):\(pad(tmValue.tm_sec, 2))."
            + String(repeating: "0", count: 6 - microText.count) + microText + "+00"
    }

    /// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM[:SS]]`.
    static func parse(_ text: String) -> Date? {
        let c = Array(text.utf8)
        func number(_ from: Int, _ count: Int) -> Int? {
            guard from + count <= c.count else { return nil }
            var value = 0
            for i in from..<(from + count) {
                guard c[i] >= 48, c[i] <= 57 else { return nil }
                value = value * 10 + Int(c[i] - 48)
            }
            return value
        }
        guard c.count >= 22, let year = number(0, 4), let month = number(5, 2), let day = number(8, 2),
            let hour = number(11, 2), let minute = number(14, 2), let second = number(17, 2)
        else { return nil }
        var index = 19
        var fraction = 0.0
        if index < c.count, c[index] == UInt8(ascii: ".") {
            index += 1
            var scale = 0.1
            while index < c.count, c[index] >= 48, c[index] <= 57 {
                fraction += Double(c[index] - 48) * scale
                scale /= 10
                index += 1
            }
        }
        guard index < c.count, c[index] == UInt8(ascii: "+") || c[index] == UInt8(ascii: "-") else { return nil }
        let sign = c[index] == UInt8(ascii: "-") ? -1 : 1
        guard let offsetHours = number(index + 1, 2) else { return nil }
        var offset = offsetHours * 3600
        if index + 3 < c.count, c[index + 3] == UInt8(ascii: ":"), let minutes = number(index + 4, 2) {
            offset += minutes * 60
        }
        var tmValue = tm()
        tmValue.tm_year = Int32(year - 1900)
        tmValue.tm_mon = Int32(month - 1)
        tmValue.tm_mday = Int32(day)
        tmValue.tm_hour = Int32(hour)
        tmValue.tm_min = Int32(minute)
        tmValue.tm_sec = Int32(second)
        let epoch = timegm(&tmValue)
        return Date(timeIntervalSince1970: Double(epoch - sign * offset) + fraction)
    }
}
