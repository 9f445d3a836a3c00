// What the console keeps in memory while it runs: never in storage, never in the URL.

export const state = {
  csrf: null, // the session's CSRF token, kept in memory only
  me: null, // GET /v1/me: estate_id, estate_name, admin_id, name, primary
  brokerUrl: null, // the broker's configured public_url, if any
  lastCode: null, // the code just made: shown once, never put in the URL
  pendingMessage: null, // what to announce on the page being opened
  nav: 0, // bumps on each navigation, so that a slow page does not overwrite a newer one
};
