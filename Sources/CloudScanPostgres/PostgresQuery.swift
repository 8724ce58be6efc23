import Foundation

/// A SQL statement with its parameters. Built by string interpolation, every interpolated value
/// becomes a `$n` placeholder and a bound parameter: values are never spliced into the SQL text.
///
/// ```swift
/// let rows = try await connection.query("SELECT id FROM scans WHERE status = \(status) LIMIT \(limit)")
/// ```
public struct PostgresQuery: Sendable, ExpressibleByStringInterpolation, CustomStringConvertible {
    /// The SQL text with `$1…$n` placeholders.
    public var sql: String
    /// The bound parameters, in placeholder order.
    public var binds: [PostgresBind]

    /// A statement and explicit parameters.
    public init(sql: String, binds: [PostgresBind] = []) {
        self.sql = sql
        self.binds = binds
    }

    public init(stringLiteral value: String) {
        self.init(sql: value)
    }

    public init(stringInterpolation: StringInterpolation) {
        self.init(sql: stringInterpolation.sql, binds: stringInterpolation.binds)
    }

    /// The SQL text only; parameter values are never printed.
    public var description: String { sql }

    /// Builds the SQL text and the parameter list.
    public struct StringInterpolation: StringInterpolationProtocol {
        var sql = ""
        var binds: [PostgresBind] = []

        public init(literalCapacity: Int, interpolationCount: Int) {
            sql.reserveCapacity(literalCapacity + interpolationCount * 3)
            binds.reserveCapacity(interpolationCount)
        }

        public mutating func appendLiteral(_ literal: String) {
            sql.append(literal)
        }

        /// Binds a value as the next `$n` parameter.
        public mutating func appendInterpolation<T: PostgresEncodable>(_ value: T) {
            binds.append(PostgresBind(value))
            sql.append("$\(binds.count)")
        }

        /// Binds an optional value; nil is SQL NULL.
        public mutating func appendInterpolation<T: PostgresEncodable>(_ value: T?) {
            binds.append(PostgresBind(value))
            sql.append("$\(binds.count)")
        }

        /// Splices trusted SQL text (an identifier or keyword the code chose, never input).
        public mutating func appendInterpolation(unescaped text: String) {
            sql.append(text)
        }

        /// Splices an identifier, double-quoted and escaped.
        public mutating func appendInterpolation(identifier: String) {
            sql.append(PostgresQuery.quoteIdentifier(identifier))
        }
    }

    /// `"name"` with embedded quotes doubled.
    public static func quoteIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
