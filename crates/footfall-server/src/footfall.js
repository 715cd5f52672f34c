/* Footfall browser tracker. No cookies, no storage: the server recognises visitors by a
   keyed daily hash. Attributes of its <script> tag:
   data-site (tracking id, required), data-api (endpoint; default: the script's origin),
   data-hash (hash-based routing), data-respect-dnt, data-outbound-links,
   data-file-downloads. Custom events: footfall('Signup', {props: {...},
   revenue: {amount, currency}, interactive, callback}). */
(function (w, d, n) {
  var s = d.currentScript;
  if (!s) return;
  var at = function (k) { return s.getAttribute('data-' + k); };
  var on = function (k) { var v = at(k); return v !== null && v !== 'false'; };
  var site = at('site');
  var api = at('api') || new URL(s.src).origin + '/api/v1/events';
  var hash = on('hash');
  var last;

  function page() {
    var l = w.location, p = l.pathname;
    if (hash) {
      var h = l.hash.replace(/^#\/?/, '');
      if (h) p = p.replace(/\/$/, '') + '/' + h;
    }
    return l.protocol + '//' + l.host + p + l.search;
  }

  function send(name, o) {
    o = o || {};
    var done = function (ok) { if (o.callback) o.callback({ ok: ok }); };
    if (on('respect-dnt') && (n.doNotTrack == '1' || w.doNotTrack == '1')) return done(false);
    if (n.webdriver) return done(false);
    var body = JSON.stringify({
      tracking_id: site, name: name, url: o.url || page(),
      referrer: d.referrer || null, title: d.title || null,
      props: o.props, revenue: o.revenue, interactive: o.interactive !== false
    });
    // text/plain keeps the request simple: no CORS preflight, and beacons survive unload.
    if (n.sendBeacon && n.sendBeacon(api, new Blob([body], { type: 'text/plain' }))) return done(true);
    fetch(api, { method: 'POST', body: body, keepalive: true, headers: { 'Content-Type': 'text/plain' } })
      .then(function (r) { done(r.ok); }, function () { done(false); });
  }

  function pageview() {
    var u = page();
    if (u === last) return;
    last = u;
    send('pageview', { url: u });
  }

  var hist = w.history;
  ['pushState', 'replaceState'].forEach(function (m) {
    var orig = hist[m];
    hist[m] = function () { var r = orig.apply(this, arguments); pageview(); return r; };
  });
  w.addEventListener('popstate', pageview);
  if (hash) w.addEventListener('hashchange', pageview);

  var files = /\.(pdf|xlsx?|docx?|txt|rtf|csv|exe|key|pp[st]x?|7z|pkg|rar|gz|zip|avi|mov|mp4|mpe?g|wmv|midi?|mp3|wav|wma|dmg|apk|iso)$/i;
  if (on('outbound-links') || on('file-downloads')) {
    d.addEventListener('click', function (e) {
      var a = e.target && e.target.closest && e.target.closest('a[href]');
      if (!a) return;
      var u = new URL(a.href, w.location.href);
      if (on('file-downloads') && files.test(u.pathname)) {
        send('File Download', { props: { url: u.href } });
      } else if (on('outbound-links') && u.host !== w.location.host && /^https?:$/.test(u.protocol)) {
        send('Outbound Link: Click', { props: { url: u.href } });
      }
    });
  }

  var queued = (w.footfall && w.footfall.q) || [];
  w.footfall = function (name, o) { send(name, o); };
  for (var i = 0; i < queued.length; i++) send.apply(null, queued[i]);
  pageview();
})(window, document, navigator);
