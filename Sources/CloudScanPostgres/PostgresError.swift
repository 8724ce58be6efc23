/// An error from the PostgreSQL module.
///
/// `description` names the code, the SQLSTATE, the server's message and the SQL text, but never a
/// bound parameter value: the server's DETAIL (which can quote row values) is kept out of it, and
/// for data exceptions (SQLSTATE class 22), whose messages quote the offending input, quoted text
/// is redacted.
public struct PostgresError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Extensible: compare with the static members.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The connection could not be established.
        public static let connectionFailed = Code(rawValue: "connectionFailed")
        /// The connection was lost (server restart, network) while in use.
        public static let connectionClosed = Code(rawValue: "connectionClosed")
        /// The server answered with an error; see ``PostgresError/sqlState``.
        public static let server = Code(rawValue: "server")
        /// The statement was cancelled (task cancellation or statement timeout).
        public static let queryCancelled = Code(rawValue: "queryCancelled")
        /// A COMMIT did not commit (the transaction had been aborted).
        public static let commitFailed = Code(rawValue: "commitFailed")
        /// A value could not be decoded into the requested Swift type.
        public static let decoding = Code(rawValue: "decoding")
        /// The client was shut down.
        public static let clientClosed = Code(rawValue: "clientClosed")
        /// The result did not have the expected shape (e.g. no row where one was expected).
        public static let unexpectedResult = Code(rawValue: "unexpectedResult")
    }

    /// What kind of failure this is.
    public var code: Code
    /// The five-character SQLSTATE, for server errors.
    public var sqlState: String?
    /// The server's primary message, or the library's.
    public var message: String
    /// The server's DETAIL field. It can contain row values: never logged by `description`.
    public var serverDetail: String?
    /// The server's HINT field.
    public var hint: String?
    /// The constraint a violation names, if any.
    public var constraint: String?
    /// The SQL text (with `$n` placeholders, never values).
    public var query: String?

    /// Creates an error.
    public init(
        code: Code, sqlState: String? = nil, message: String, serverDetail: String? = nil, hint: String? = nil,
        constraint: String? = nil, query: String? = nil
    ) {
        self.code = code
        self.sqlState = sqlState
        self.message = message
        self.serverDetail = serverDetail
        self.hint = hint
        self.constraint = constraint
        self.query = query
    }

    /// SQLSTATE 23505.
    public var isUniqueViolation: Bool { sqlState == "23505" }
    /// The statement's data was refused (class 22 data exception, class 23 integrity violation
    /// other than a unique violation, or 54000 program limit): the same input fails again, so a
    /// message carrying it is dead-lettered, never retried.
    public var isDataError: Bool {
        guard code == .server, let state = sqlState else { return false }
        return state.hasPrefix("22") || (state.hasPrefix("23") && state != "23505") || state == "54000"
    }
    /// SQLSTATE 40001 / 40P01: retrying the transaction may succeed.
    public var isSerializationFailure: Bool { sqlState == "40001" || sqlState == "40P01" }
    /// SQLSTATE class 42501 (insufficient privilege, including row-level security refusals).
    public var isInsufficientPrivilege: Bool { sqlState == "42501" }

    public var description: String {
        var parts = ["code: \(code)"]
        if let sqlState { parts.append("sqlState: \(sqlState)") }
        parts.append("message: \(Self.redacted(message, sqlState: sqlState))")
        if let constraint { parts.append("constraint: \(constraint)") }
        if let hint { parts.append("hint: \(hint)") }
        if let query { parts.append("query: \(query)") }
        return "PostgresError(\(parts.joined(separator: ", ")))"
    }

    /// Data exceptions quote the rejected input (`invalid input syntax for type uuid: "…"`).
    static func redacted(_ message: String, sqlState: String?) -> String {
        guard let sqlState, sqlState.hasPrefix("22") else { return message }
        var out = ""
        var inQuote = false
        for character in message {
            if character == "\"" {
                if !inQuote { out.append("\"…") } else { out.append("\"") }
                inQuote.toggle()
            } else if !inQuote {
                out.append(character)
            }
        }
        return out
    }
}
