internal import CLibPQ
import Foundation
import Synchronization

/// Owns one `PGconn*`. Not thread-safe: every call happens on the owning
/// ``PostgresConnection``'s serial queue (or, for the listener, its own thread).
final class LibPQConnection {
    private var handle: OpaquePointer?
    /// Sends cancel requests from any thread.
    let cancelToken: PostgresCancelToken

    private init(handle: OpaquePointer) {
        self.handle = handle
        self.cancelToken = PostgresCancelToken(cancel: PQgetCancel(handle))
    }

    deinit { close() }

    /// Connects (blocking, bounded by `connect_timeout`). The handle is freed even when connecting fails.
    static func connect(_ configuration: PostgresConfiguration) throws -> LibPQConnection {
        let parameters = configuration.libpqParameters
        let keywords = parameters.map { strdup($0.0) }
        let values = parameters.map { strdup($0.1) }
        defer {
            keywords.forEach { free($0) }
            values.forEach { free($0) }
        }
        var keywordPointers = keywords.map { UnsafePointer($0) } + [nil]
        var valuePointers = values.map { UnsafePointer($0) } + [nil]
        guard let handle = PQconnectdbParams(&keywordPointers, &valuePointers, 1) else {
            throw PostgresError(code: .connectionFailed, message: "out of memory allocating a connection")
        }
        guard PQstatus(handle) == CONNECTION_OK else {
            let message = Self.errorMessage(handle)
            PQfinish(handle)
            throw PostgresError(code: .connectionFailed, message: message)
        }
        return LibPQConnection(handle: handle)
    }

    /// Frees the handle; idempotent.
    func close() {
        guard let handle else { return }
        cancelToken.invalidate()
        PQfinish(handle)
        self.handle = nil
    }

    var isOpen: Bool { handle.map { PQstatus($0) == CONNECTION_OK } ?? false }

    /// Reads whatever the server sent while idle (without blocking) and reports whether the
    /// connection is still usable. A server restart shows here as EOF.
    func checkAlive() -> Bool {
        guard let handle, PQstatus(handle) == CONNECTION_OK else { return false }
        // Read until nothing more is waiting: a shutting-down server sends a notice, then EOF.
        var rounds = 0
        repeat {
            guard PQconsumeInput(handle) == 1, PQstatus(handle) == CONNECTION_OK else { return false }
            while let notify = PQnotifies(handle) { PQfreemem(notify) }
            rounds += 1
        } while rounds < 16 && cloudscan_pq_wait_readable(handle, 0) > 0
        return PQstatus(handle) == CONNECTION_OK
    }

    /// Whether the session is idle outside a transaction (safe to hand to another caller).
    var isIdleOutsideTransaction: Bool {
        guard let handle else { return false }
        return PQtransactionStatus(handle) == PQTRANS_IDLE
    }

    /// The backend process id (for tests and logs).
    var backendPID: Int32 { handle.map { PQbackendPID($0) } ?? 0 }

    // MARK: Queries

    /// Runs one statement with text parameters (extended protocol, `PQexecParams`).
    func execute(_ query: PostgresQuery) throws -> PostgresRows {
        // libpq takes C strings: a NUL would silently cut the value short. PostgreSQL text cannot
        // hold NUL either, so refuse it as the server refuses bad text (a data error, 22021).
        if query.binds.contains(where: { $0.text?.utf8.contains(0) == true }) {
            throw PostgresError(
                code: .server, sqlState: "22021", message: "a parameter holds a NUL character, which text cannot store",
                query: query.sql)
        }
        let handle = try openHandle(query.sql)
        let count = query.binds.count
        let texts: [UnsafeMutablePointer<CChar>?] = query.binds.map { bind in bind.text.map { strdup($0) } }
        defer { texts.forEach { free($0) } }
        var types = query.binds.map { Oid($0.type.rawValue) }
        var values = texts.map { UnsafePointer($0) }
        let result = PQexecParams(handle, query.sql, Int32(count), &types, &values, nil, nil, 0)
        return try consume(result, sql: query.sql)
    }

    /// Runs a script of one or more statements with no parameters (simple protocol, `PQexec`).
    /// Only for trusted SQL (migrations, fixed commands).
    func executeScript(_ sql: String) throws -> PostgresRows {
        let handle = try openHandle(sql)
        var last: PostgresRows?
        guard PQsendQuery(handle, sql) == 1 else { throw connectionError(sql: sql) }
        var firstError: PostgresError?
        while let result = PQgetResult(handle) {
            do {
                let rows = try consume(result, sql: sql)
                last = rows
            } catch let error as PostgresError {
                if firstError == nil { firstError = error }
            }
        }
        if let firstError { throw firstError }
        if PQstatus(handle) != CONNECTION_OK { throw connectionError(sql: sql) }
        return last
            ?? PostgresRows(columns: [], columnTypes: [], values: [], rowCount: 0, commandTag: "", affectedRows: 0)
    }

    // MARK: COPY

    /// `COPY … FROM STDIN`: starts the copy, lets `body` write rows, ends it and returns the row count.
    func copyFrom(_ sql: String, body: (inout PostgresCopyWriter) throws -> Void) throws -> Int {
        let handle = try openHandle(sql)
        guard let start = PQexec(handle, sql) else { throw connectionError(sql: sql) }
        let status = PQresultStatus(start)
        if status != PGRES_COPY_IN {
            _ = try consume(start, sql: sql)
            throw PostgresError(code: .unexpectedResult, message: "statement did not start COPY FROM STDIN", query: sql)
        }
        PQclear(start)
        var writer = PostgresCopyWriter { bytes in
            let sent = bytes.withUnsafeBufferPointer { buffer in
                buffer.withMemoryRebound(to: CChar.self) { PQputCopyData(handle, $0.baseAddress, Int32($0.count)) }
            }
            if sent != 1 { throw self.connectionError(sql: sql) }
        }
        do {
            try body(&writer)
            try writer.flush()
        } catch {
            _ = PQputCopyEnd(handle, "aborted by client")
            while let result = PQgetResult(handle) { PQclear(result) }
            throw error
        }
        guard PQputCopyEnd(handle, nil) == 1 else { throw connectionError(sql: sql) }
        var copied = 0
        var firstError: Error?
        while let result = PQgetResult(handle) {
            do { copied = try consume(result, sql: sql).affectedRows } catch {
                if firstError == nil { firstError = error }
            }
        }
        if let firstError { throw firstError }
        return copied
    }

    // MARK: LISTEN/NOTIFY

    /// Waits up to `timeoutMilliseconds` for input, then returns the notifications received.
    func waitForNotifications(timeoutMilliseconds: Int32) throws -> [PostgresNotification] {
        guard let handle, PQstatus(handle) == CONNECTION_OK else {
            throw PostgresError(code: .connectionClosed, message: "connection is closed")
        }
        var out: [PostgresNotification] = []
        // Anything already buffered is returned without waiting.
        out.append(contentsOf: drainNotifications(handle))
        if !out.isEmpty { return out }
        let ready = cloudscan_pq_wait_readable(handle, timeoutMilliseconds)
        if ready < 0, errno != EINTR { throw connectionError(sql: nil) }
        if ready > 0 {
            guard PQconsumeInput(handle) == 1 else { throw connectionError(sql: nil) }
        }
        out.append(contentsOf: drainNotifications(handle))
        return out
    }

    private func drainNotifications(_ handle: OpaquePointer) -> [PostgresNotification] {
        var out: [PostgresNotification] = []
        while let notify = PQnotifies(handle) {
            let value = notify.pointee
            out.append(
                PostgresNotification(
                    channel: String(cString: value.relname), payload: String(cString: value.extra),
                    backendPID: value.be_pid))
            PQfreemem(notify)
        }
        return out
    }

    /// `"identifier"` escaped by libpq.
    func escapeIdentifier(_ name: String) throws -> String {
        let handle = try openHandle(nil)
        guard let escaped = PQescapeIdentifier(handle, name, name.utf8.count) else { throw connectionError(sql: nil) }
        defer { PQfreemem(escaped) }
        return String(cString: escaped)
    }

    // MARK: Results and errors

    private func openHandle(_ sql: String?) throws -> OpaquePointer {
        guard let handle else {
            throw PostgresError(code: .connectionClosed, message: "connection is closed", query: sql)
        }
        return handle
    }

    /// Reads a result into Swift values and frees it; throws for error results.
    private func consume(_ result: OpaquePointer?, sql: String) throws -> PostgresRows {
        guard let result else { throw connectionError(sql: sql) }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY, PGRES_COPY_IN, PGRES_COPY_OUT:
            let fieldCount = Int(PQnfields(result))
            let rowCount = Int(PQntuples(result))
            var columns: [String] = []
            var types: [PostgresDataType] = []
            columns.reserveCapacity(fieldCount)
            for field in 0..<fieldCount {
                columns.append(String(cString: PQfname(result, Int32(field))))
                types.append(PostgresDataType(rawValue: UInt32(PQftype(result, Int32(field)))))
            }
            var values: [String?] = []
            values.reserveCapacity(rowCount * fieldCount)
            for row in 0..<rowCount {
                for field in 0..<fieldCount {
                    if PQgetisnull(result, Int32(row), Int32(field)) == 1 {
                        values.append(nil)
                    } else {
                        values.append(String(cString: PQgetvalue(result, Int32(row), Int32(field))))
                    }
                }
            }
            let tag = String(cString: PQcmdStatus(result))
            let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
            return PostgresRows(
                columns: columns, columnTypes: types, values: values, rowCount: rowCount, commandTag: tag,
                affectedRows: affected)
        default:
            throw serverError(result, sql: sql)
        }
    }

    private func serverError(_ result: OpaquePointer, sql: String) -> PostgresError {
        func field(_ code: UInt8) -> String? {
            PQresultErrorField(result, Int32(code)).map { String(cString: $0) }
        }
        let sqlState = field(UInt8(ascii: "C"))
        guard let sqlState else {
            // No SQLSTATE: a client-side failure, typically the connection dropping mid-query.
            return connectionError(sql: sql)
        }
        let code: PostgresError.Code
        switch sqlState {
        case "57014": code = .queryCancelled
        case "57P01", "57P02", "57P03": code = .connectionClosed
        default: code = .server
        }
        return PostgresError(
            code: code, sqlState: sqlState, message: field(UInt8(ascii: "M")) ?? "unknown server error",
            serverDetail: field(UInt8(ascii: "D")), hint: field(UInt8(ascii: "H")),
            constraint: field(UInt8(ascii: "n")),
            query: sql)
    }

    private func connectionError(sql: String?) -> PostgresError {
        guard let handle else {
            return PostgresError(code: .connectionClosed, message: "connection is closed", query: sql)
        }
        return PostgresError(
            code: PQstatus(handle) == CONNECTION_OK ? .server : .connectionClosed,
            message: Self.errorMessage(handle), query: sql)
    }

    private static func errorMessage(_ handle: OpaquePointer) -> String {
        String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Sends a cancel request for whatever the connection is running. `PQcancel` is documented as
/// safe to call from any thread; the mutex makes sure the `PGcancel` is not freed during a call.
final class PostgresCancelToken: Sendable {
    // The OpaquePointer is only used inside the mutex, so sharing the token is safe.
    private let cancel: Mutex<UncheckedPointer?>

    struct UncheckedPointer: @unchecked Sendable {
        // Guarded by the enclosing Mutex.
        let pointer: OpaquePointer
    }

    init(cancel: OpaquePointer?) {
        self.cancel = Mutex(cancel.map(UncheckedPointer.init))
    }

    /// Asks the server to cancel the running statement; returns whether the request was sent.
    @discardableResult
    func send() -> Bool {
        cancel.withLock { pointer in
            guard let pointer else { return false }
            var buffer = [CChar](repeating: 0, count: 256)
            return PQcancel(pointer.pointer, &buffer, Int32(buffer.count)) == 1
        }
    }

    func invalidate() {
        cancel.withLock { pointer in
            if let pointer { PQfreeCancel(pointer.pointer) }
            pointer = nil
        }
    }

    deinit { invalidate() }
}

/// A NOTIFY received on a LISTEN channel.
public struct PostgresNotification: Sendable, Hashable {
    /// The channel name.
    public var channel: String
    /// The payload (may be empty).
    public var payload: String
    /// The notifying backend's process id.
    public var backendPID: Int32
}
