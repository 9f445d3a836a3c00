// The signed-in session, kept in memory while the console runs: never in storage, never
// in the URL. Only session.js writes it (on sign-in, sign-out and a session's end); the
// other modules read it. What one page hands another travels through a named function
// of the page or module that owns it (router.go's message, auth-code.js's authenticate),
// never through this object.

export const state = {
  csrf: null, // the session's CSRF token, kept in memory only
  me: null, // GET /v1/me: estate_id, estate_name, admin_id, name, primary
  brokerUrl: null, // the broker's configured public_url, if any
};
