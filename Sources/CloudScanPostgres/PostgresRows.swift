/// A result set, fully read into memory (text format).
public struct PostgresRows: Sendable, RandomAccessCollection {
    /// Column names, in order.
    public let columns: [String]
    /// Column type OIDs, in order.
    public let columnTypes: [PostgresDataType]
    /// The command tag (`SELECT 3`, `INSERT 0 1`, `COMMIT`, …).
    public let commandTag: String
    /// Rows affected, for INSERT/UPDATE/DELETE/COPY/SELECT; 0 when the tag has no count.
    public let affectedRows: Int
    let values: [String?]
    let rowCount: Int

    init(
        columns: [String], columnTypes: [PostgresDataType], values: [String?], rowCount: Int, commandTag: String,
        affectedRows: Int
    ) {
        self.columns = columns
        self.columnTypes = columnTypes
        self.values = values
        self.rowCount = rowCount
        self.commandTag = commandTag
        self.affectedRows = affectedRows
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { rowCount }
    public subscript(position: Int) -> PostgresRow { PostgresRow(rows: self, index: position) }

    /// The only row; throws if there is not exactly one.
    public func single() throws -> PostgresRow {
        guard rowCount == 1 else {
            throw PostgresError(code: .unexpectedResult, message: "expected one row, got \(rowCount)")
        }
        return self[0]
    }
}

/// One row of a ``PostgresRows``.
public struct PostgresRow: Sendable {
    let rows: PostgresRows
    let index: Int

    /// The raw text of a column, nil for NULL.
    public func text(at column: Int) -> String? {
        rows.values[index * rows.columns.count + column]
    }

    /// Decodes the column at a position.
    public func decode<T: PostgresDecodable>(_ type: T.Type = T.self, at column: Int) throws -> T {
        guard column < rows.columns.count else {
            throw PostgresError(code: .decoding, message: "no column \(column) in a row of \(rows.columns.count)")
        }
        guard let text = text(at: column) else { return try T.decodeNull() }
        do {
            return try T.decode(postgresText: text, type: rows.columnTypes[column])
        } catch var error as PostgresError {
            error.message += " (column \(rows.columns[column]))"
            throw error
        }
    }

    /// Decodes the column with a name.
    public func decode<T: PostgresDecodable>(_ type: T.Type = T.self, _ name: String) throws -> T {
        guard let column = rows.columns.firstIndex(of: name) else {
            throw PostgresError(code: .decoding, message: "no column named \(name)")
        }
        return try decode(T.self, at: column)
    }
}
