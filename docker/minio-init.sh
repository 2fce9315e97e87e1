#!/bin/sh
# One-shot MinIO set-up for the compose stack (the `minio-init` service, image quay.io/minio/mc):
# the bucket, a user limited to that bucket whose keys the workers and the producer use
# (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), and the sample recordings under INPUT_PREFIX.
# Safe to run again: every step is idempotent. Uses only sh, cat and mc (a minimal image).
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
BUCKET="${BUCKET:-echocam}"
INPUT_PREFIX="${INPUT_PREFIX:-recordings}"
ENDPOINT="${MINIO_ENDPOINT:-http://minio:9000}"
POLICY="echocam-${BUCKET}"

mc alias set local "$ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/${BUCKET}"

# Read, write and list this bucket only (multipart for large manifests); nothing else.
policy_file=/tmp/echocam-policy.json
cat >"$policy_file" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::${BUCKET}"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                 "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::${BUCKET}/*"]
    }
  ]
}
EOF
mc admin policy create local "$POLICY" "$policy_file" >/dev/null
rm -f "$policy_file"
mc admin user add local "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
# `attach` fails when the policy is already attached (a second `up`): check before attaching.
case "$(mc admin user info local "$AWS_ACCESS_KEY_ID")" in
    *"$POLICY"*) ;;
    *) mc admin policy attach local "$POLICY" --user "$AWS_ACCESS_KEY_ID" >/dev/null ;;
esac

# The sample recordings, for `docker compose run --rm producer`.
found=0
for f in /samples/*.wav /samples/*.flac /samples/*.ogg /samples/*.mp3; do
    [ -f "$f" ] || continue
    mc cp --quiet "$f" "local/${BUCKET}/${INPUT_PREFIX}/$(basename "$f")" >/dev/null
    found=$((found + 1))
done
echo "minio-init: bucket ${BUCKET} ready for ${AWS_ACCESS_KEY_ID} (policy ${POLICY});" \
    "${found} sample recordings under s3://${BUCKET}/${INPUT_PREFIX}/"
