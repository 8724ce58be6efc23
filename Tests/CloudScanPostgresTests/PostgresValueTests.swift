import Foundation
import Testing

@testable import CloudScanPostgres

@Suite("Text-format values")
struct PostgresValueTests {
    @Test("array literals round-trip, including quotes, backslashes, commas and empty strings")
    func arrayLiteral() {
        let values = ["a", "b c", "q\"uote", "back\\slash", "x,y", "", "{}"]
        let text = PostgresArrayLiteral.format(values)
        #expect(PostgresArrayLiteral.parse(text) == values)
        #expect(PostgresArrayLiteral.parse("{}") == [])
        #expect(PostgresArrayLiteral.parse("{sast,secrets}") == ["sast", "secrets"])
        #expect(PostgresArrayLiteral.parse("{a,NULL}") == nil)
        #expect(PostgresArrayLiteral.parse("not an array") == nil)
    }

    @Test("timestamps: the ISO output style parses, with offsets and fractions")
    func timestamps() throws {
        let date = Date(timeIntervalSince1970: 1_764_295_753.250_000)
        #expect(PostgresTimestamp.format(date) == "2025-11-28 02:09:13.250000+00")
        #expect(PostgresTimestamp.parse("2025-11-28 02:09:13.25+00") == date)
        #expect(PostgresTimestamp.parse("2025-11-28 04:09:13.25+02") == date)
        #expect(PostgresTimestamp.parse("2025-11-28 01:39:13.25-00:30") == date)
        #expect(PostgresTimestamp.parse("2025-11-28 02:09:13+00") == Date(timeIntervalSince1970: 1_764_295_753))
        #expect(PostgresTimestamp.parse("yesterday") == nil)
        // Far from 1970 (year 1): still six fraction digits, never a negative fraction.
        let early = Date(timeIntervalSince1970: -62_135_596_680)
        #expect(PostgresTimestamp.format(early) == "0001-01-01 00:02:00.000000+00")
        #expect(PostgresTimestamp.parse(PostgresTimestamp.format(early)) == early)
    }

    @Test("interpolation binds values as parameters, never as SQL text")
    func interpolationBinds() {
        let hostile = "'; DROP TABLE scans; --"
        let limit = 10
        let query: PostgresQuery = "SELECT * FROM scans WHERE name = \(hostile) LIMIT \(limit)"
        #expect(query.sql == "SELECT * FROM scans WHERE name = $1 LIMIT $2")
        #expect(query.binds.map(\.text) == [hostile, "10"])
        #expect(!query.description.contains("DROP"))
        let ident: PostgresQuery = "CREATE SCHEMA \(identifier: "we\"ird")"
        #expect(ident.sql == "CREATE SCHEMA \"we\"\"ird\"")
    }

    @Test("the seed's DB_* variables configure the connection; the password is never printed")
    func environmentConfiguration() {
        let configuration = PostgresConfiguration(environment: [
            "DB_HOST": "db.internal", "DB_PORT": "6543", "DB_NAME": "scans", "DB_USER": "svc", "DB_PASSWORD": "hunter2",
            "DB_SSLMODE": "verify-full", "DB_POOL_SIZE": "12",
        ])
        #expect(configuration.maximumConnections == 12)
        let parameters = Dictionary(configuration.libpqParameters, uniquingKeysWith: { $1 })
        #expect(parameters["host"] == "db.internal")
        #expect(parameters["port"] == "6543")
        #expect(parameters["dbname"] == "scans")
        #expect(parameters["user"] == "svc")
        #expect(parameters["password"] == "hunter2")
        #expect(parameters["sslmode"] == "verify-full")
        #expect(!configuration.description.contains("hunter2"))
        // Unset values are left to libpq (which reads PG* variables).
        let empty = Dictionary(PostgresConfiguration(environment: [:]).libpqParameters, uniquingKeysWith: { $1 })
        #expect(empty["host"] == nil && empty["user"] == nil && empty["password"] == nil)
    }

    @Test("search_path and statement_timeout reach the session options, escaped")
    func sessionOptions() {
        var configuration = PostgresConfiguration()
        configuration.searchPath = "tenant one"
        configuration.statementTimeout = .milliseconds(1500)
        #expect(configuration.sessionOptions.contains("-c search_path=tenant\\ one"))
        #expect(configuration.sessionOptions.contains("-c statement_timeout=1500"))
    }

    @Test("the COPY fast paths write the same text as postgresText")
    func copyFastPaths() {
        func bytes<T: PostgresEncodable>(_ value: T) -> String {
            var buffer: [UInt8] = []
            value.appendPostgresText(to: &buffer)
            return String(decoding: buffer, as: UTF8.self)
        }
        let id = UUID()
        #expect(bytes(id) == id.uuidString.lowercased())
        for n in [0, 7, -7, 1234567890, Int.max, Int.min + 1] { #expect(bytes(n) == String(n)) }
        #expect(bytes(Int32.min) == String(Int32.min))
        #expect(bytes(Int64(-42)) == "-42")
        var writer = PostgresCopyWriter.forFile { _ in }
        #expect(throws: Never.self) { try writer.writeRow([id, 5, "a\tb\\c", nil]) }
    }

    @Test("COPY rows: fields separated by tabs, special bytes escaped, NULL as \\N")
    func copyEncoding() throws {
        var out: [UInt8] = []
        var writer = PostgresCopyWriter.forFile { out.append(contentsOf: $0) }
        try writer.writeRow(["plain", "tab\there", "new\nline", "back\\slash", nil, 42])
        try writer.flush()
        #expect(String(decoding: out, as: UTF8.self) == "plain\ttab\\there\tnew\\nline\tback\\\\slash\t\\N\t42\n")
    }
}

@Suite("Timestamps from outside")
struct PostgresTimestampBoundsTests {
    @Test(
        "any Double a Date may hold is written without trapping, clamped to PostgreSQL's years 1–9999",
        arguments: [
            (1e19, "9999-12-31 23:59:59.000000+00"), (9.3e18, "9999-12-31 23:59:59.000000+00"),
            (6.78e16, "9999-12-31 23:59:59.000000+00"), (-1e19, "0001-01-01 00:00:00.000000+00"),
            (Double.infinity, "9999-12-31 23:59:59.000000+00"), (Double.nan, "1970-01-01 00:00:00.000000+00"),
        ])
    func clamped(seconds: Double, text: String) {
        #expect(PostgresTimestamp.format(Date(timeIntervalSince1970: seconds)) == text)
    }
}
