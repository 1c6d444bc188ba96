"""The media repository: content-addressed file storage, thumbnails, URL previews (behind
an SSRF guard), and the service the media endpoints and the admin API call."""
